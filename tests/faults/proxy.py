"""A TCP relay between one client and the broker that can partition and delay the link.

This kernel has no netem qdisc, so faults on a link are made in userspace: ``partition()`` stops
moving bytes in both directions while every socket stays open (what a cut cable looks like to
both ends: silence, then keep-alive timeouts), ``heal()`` moves them again, ``delay`` holds each
chunk back before forwarding it.
"""

from __future__ import annotations

import contextlib
import random
import select
import socket
import threading
import time


class TcpProxy:
    """Listens on 127.0.0.1:<port> and relays every connection to ``target_port``."""

    def __init__(self, target_port: int, *, delay: float = 0.0, jitter: float = 0.0) -> None:
        self.target_port = target_port
        self.delay, self.jitter = delay, jitter
        self._open = threading.Event()
        self._open.set()
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._pumps = 0  # relaying threads still running: two per connection
        self._threads = [threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True)]
        self._threads[0].start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def relaying(self) -> bool:
        """Whether any connection is still open through the proxy (or its bytes still on the way)."""
        with self._lock:
            return self._pumps > 0

    def partition(self) -> None:
        self._open.clear()

    def heal(self) -> None:
        self._open.set()

    def close(self) -> None:
        """Close every socket and join every thread of the proxy: none outlives the test."""
        self._closed.set()
        self._open.set()
        stop_listening(self._listener)
        with self._lock:
            for sock in self._sockets:
                sock.close()
            threads = list(self._threads)
        for thread in threads:
            thread.join(JOIN_S)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                return
            with self._lock:
                self._sockets += [client, upstream]
                self._pumps += 2
                pumps = [threading.Thread(target=self._pump, args=(src, dst), name="proxy-pump", daemon=True)
                         for src, dst in ((client, upstream), (upstream, client))]
                self._threads += pumps
            for pump in pumps:
                pump.start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        rng = random.Random()
        try:
            while not self._closed.is_set():
                ready, _, _ = select.select([src], [], [], 0.2)
                if not ready:
                    continue
                self._open.wait()  # partitioned: the bytes wait here, the sockets stay open
                data = src.recv(65536)
                if not data:
                    break
                if self.delay or self.jitter:
                    time.sleep(self.delay + rng.uniform(0, self.jitter))  # the injected latency itself
                self._open.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._pumps -= 1


JOIN_S = 5.0
"""How long ``close`` waits for each thread (a pump sees the close within its 0.2 s select)."""


def stop_listening(listener: socket.socket) -> None:
    """Close a listening socket so that a thread blocked in its ``accept()`` returns: on Linux a
    plain ``close()`` from another thread leaves ``accept()`` blocked for good; ``shutdown`` wakes it."""
    with contextlib.suppress(OSError):
        listener.shutdown(socket.SHUT_RDWR)
    listener.close()


def relay(src: socket.socket, dst: socket.socket) -> None:
    """Copy bytes from ``src`` to ``dst`` until either end closes, then close both: a plain link."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.close()

