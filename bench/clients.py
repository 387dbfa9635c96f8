"""Producers that run in the bench process, one per system, all with the same two workloads:

- ``throughput(n)``: submit ``n`` no-op tasks as fast as possible, then wait for every result;
  tasks/s = n / (time from the first submit to the last result).
- ``latency(rate, seconds)``: submit at a fixed rate (paced to an absolute schedule, so a late
  submit never shifts the ones after it) and record, per task, submit -> result in the producer.

Every wait is bounded; a run that does not complete says how many results were missing.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

RESULT_TIMEOUT = 120.0


@dataclass
class Run:
    n: int
    seconds: float
    done: int
    latencies_ms: list[float] = field(default_factory=list)
    submit_lag_ms: float = 0.0  # how far the paced submitter fell behind its schedule, at most

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def complete(self) -> bool:
        return self.done == self.n


def pace(i: int, t0: float, rate: float) -> float:
    """Sleep until task ``i``'s slot on the schedule; return how late we are (s)."""
    target = t0 + i / rate
    now = time.perf_counter()
    if target > now:
        time.sleep(target - now)
        return 0.0
    return now - target


# -- mqtt-tasks --------------------------------------------------------------------------------
class MqttTasksClient:
    name = "mqtt-tasks"

    def __init__(self, url: str, prefix: str) -> None:
        from mqtt_tasks import TaskApp

        self.app = TaskApp(url, prefix=prefix, client_id=f"bench-p-{uuid.uuid4().hex[:8]}")
        self.app.connect()

    def close(self) -> None:
        self.app.close()

    def throughput(self, n: int, timeout: float = RESULT_TIMEOUT) -> Run:
        send = self.app.send
        t0 = time.perf_counter()
        handles = [send("noop") for _ in range(n)]
        deadline = time.monotonic() + timeout
        done = 0
        for h in handles:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                h.status(left)
                done += 1
            except Exception:  # noqa: BLE001 - a timeout: count what arrived
                break
        elapsed = time.perf_counter() - t0
        done = sum(h.done() for h in handles)
        return Run(n, elapsed, done)

    def latency(self, rate: float, seconds: float, timeout: float = 30.0) -> Run:
        n = int(rate * seconds)
        sent = [0.0] * n
        got = [0.0] * n
        lag = 0.0
        finished = threading.Semaphore(0)

        def stamp(i: int) -> Callable[[Any], None]:
            def cb(_f: Any) -> None:
                got[i] = time.perf_counter()
                finished.release()
            return cb

        t0 = time.perf_counter()
        handles = []  # kept: a TaskApp holds the handles waiting for a result weakly
        for i in range(n):
            lag = max(lag, pace(i, t0, rate))
            sent[i] = time.perf_counter()
            handle = self.app.send("noop")
            handle._future.add_done_callback(stamp(i))  # bench-only: TaskHandle has no public hook
            handles.append(handle)
        return _collect(n, sent, got, finished, t0, lag, timeout)


def _collect(n: int, sent: list[float], got: list[float], finished: threading.Semaphore, t0: float,
             lag: float, timeout: float) -> Run:
    deadline = time.monotonic() + timeout
    done = 0
    while done < n and finished.acquire(timeout=max(0.0, deadline - time.monotonic())):
        done += 1
    elapsed = time.perf_counter() - t0
    lat = [(g - s) * 1000 for s, g in zip(sent, got, strict=True) if g]
    return Run(n, elapsed, len(lat), lat, lag * 1000)


# -- bare paho (the ceiling) -------------------------------------------------------------------
class PahoClient:
    """The producer half of the bare exchange: QoS 1 to the task topic, results on a reply topic."""

    name = "bare paho"

    def __init__(self, url: str, prefix: str) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        from .procs import _host_port

        self.prefix = prefix
        self.reply_topic = f"{prefix}/replies/bench-{uuid.uuid4().hex[:8]}"
        self.topic = f"{prefix}/tasks/default"
        self._lock = threading.Lock()
        self._on_reply: Callable[[str], None] = lambda _id: None
        ready = threading.Event()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-paho-p-{os.getpid()}",
                        protocol=paho.MQTTv5)
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(0)

        def on_connect(cl: Any, ud: Any, flags: Any, rc: Any, props: Any) -> None:
            cl.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            cl.subscribe(self.reply_topic, qos=1)

        c.on_connect = on_connect
        c.on_subscribe = lambda *a: ready.set()
        c.on_message = lambda cl, ud, msg: self._on_reply(json.loads(msg.payload)["id"])
        host, port = _host_port(url)
        c.connect(host, port, keepalive=30)
        c.loop_start()
        if not ready.wait(10):
            raise RuntimeError("bare paho producer: no SUBACK")
        self.client = c

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _payload(self, task_id: str) -> bytes:
        return json.dumps({"id": task_id, "task": "noop", "args": [], "kwargs": {}, "attempt": 1,
                           "reply_to": self.reply_topic}, separators=(",", ":")).encode()

    def throughput(self, n: int, timeout: float = RESULT_TIMEOUT) -> Run:
        remaining = set()
        all_done = threading.Event()

        def on_reply(task_id: str) -> None:
            with self._lock:
                remaining.discard(task_id)
                if not remaining:
                    all_done.set()

        ids = [uuid.uuid4().hex for _ in range(n)]
        remaining.update(ids)
        self._on_reply = on_reply
        t0 = time.perf_counter()
        for task_id in ids:
            self.client.publish(self.topic, self._payload(task_id), qos=1)
        all_done.wait(timeout)
        elapsed = time.perf_counter() - t0
        with self._lock:
            return Run(n, elapsed, n - len(remaining))

    def latency(self, rate: float, seconds: float, timeout: float = 30.0) -> Run:
        n = int(rate * seconds)
        sent = [0.0] * n
        got = [0.0] * n
        index: dict[str, int] = {}
        finished = threading.Semaphore(0)

        def on_reply(task_id: str) -> None:
            i = index.get(task_id)
            if i is not None and not got[i]:
                got[i] = time.perf_counter()
                finished.release()

        self._on_reply = on_reply
        lag = 0.0
        t0 = time.perf_counter()
        for i in range(n):
            task_id = uuid.uuid4().hex
            index[task_id] = i
            lag = max(lag, pace(i, t0, rate))
            sent[i] = time.perf_counter()
            self.client.publish(self.topic, self._payload(task_id), qos=1)
        return _collect(n, sent, got, finished, t0, lag, timeout)


# -- peers: results are awaited in submission order by one collector thread --------------------
class _OrderedPeer:
    """Celery and Dramatiq producers: ``_send()`` returns a result handle, ``_wait(h, t)`` blocks."""

    name = "peer"

    def _send(self) -> Any:
        raise NotImplementedError

    def _wait(self, handle: Any, timeout: float) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def throughput(self, n: int, timeout: float = RESULT_TIMEOUT) -> Run:
        t0 = time.perf_counter()
        handles = [self._send() for _ in range(n)]
        deadline = time.monotonic() + timeout
        done = 0
        for h in handles:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                self._wait(h, left)
            except Exception:  # noqa: BLE001 - a timeout or a lost result: count what arrived
                break
            done += 1
        return Run(n, time.perf_counter() - t0, done)

    def latency(self, rate: float, seconds: float, timeout: float = 30.0) -> Run:
        """A collector thread waits on each result in order and stamps its arrival; results
        arrive nearly in order here, so the stamp is late by at most one result's wait."""
        n = int(rate * seconds)
        sent = [0.0] * n
        got = [0.0] * n
        handles: list[Any] = [None] * n
        submitted = threading.Semaphore(0)
        finished = threading.Semaphore(0)
        deadline = time.monotonic() + seconds + timeout

        def collect() -> None:
            for i in range(n):
                if not submitted.acquire(timeout=max(0.0, deadline - time.monotonic())):
                    return
                try:
                    self._wait(handles[i], max(0.01, deadline - time.monotonic()))
                except Exception:  # noqa: BLE001
                    return
                got[i] = time.perf_counter()
                finished.release()

        collector = threading.Thread(target=collect, name="bench-collector", daemon=True)
        collector.start()
        lag = 0.0
        t0 = time.perf_counter()
        for i in range(n):
            lag = max(lag, pace(i, t0, rate))
            sent[i] = time.perf_counter()
            handles[i] = self._send()
            submitted.release()
        run = _collect(n, sent, got, finished, t0, lag, timeout)
        collector.join(1.0)
        return run


class CeleryClient(_OrderedPeer):
    name = "Celery"

    def __init__(self) -> None:
        from . import celery_app

        self.task = celery_app.noop

    def _send(self) -> Any:
        return self.task.delay()

    def _wait(self, handle: Any, timeout: float) -> None:
        handle.get(timeout=timeout, propagate=True)


class DramatiqClient(_OrderedPeer):
    name = "Dramatiq"

    def __init__(self) -> None:
        from . import dramatiq_app

        self.actor = dramatiq_app.noop

    def _send(self) -> Any:
        return self.actor.send()

    def _wait(self, handle: Any, timeout: float) -> None:
        handle.get_result(block=True, timeout=int(timeout * 1000))
