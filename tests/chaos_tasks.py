"""Tasks and a worker entry point for the coordinator's integration and chaos tests.

Run a worker process: ``python -c "from tests.chaos_tasks import main; main()" URL PREFIX ID CONC HB LOG``.
Every task body appends ``start``/``end`` lines (``id attempt pid``) to LOG, so a test can count
executions across processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

from mqtt_tasks import TaskCancelled
from mqtt_tasks.app import TaskApp
from mqtt_tasks.config import Settings
from mqtt_tasks.worker import Worker


class Bodies:
    """The ``work`` bodies of one app that run now, and the event that ends their wait early."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.changed = threading.Condition()
        self.count = 0

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        with self.changed:
            self.count += 1
        try:
            yield
        finally:
            with self.changed:
                self.count -= 1
                self.changed.notify_all()


def _log(path: str | None, kind: str, ident: str) -> None:
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{kind} {ident} {os.getpid()}\n".encode())
        finally:
            os.close(fd)


def make_app(url: str, prefix: str, log_path: str | None = None) -> TaskApp:
    """The tasks below on a TaskApp. ``release_bodies(app)`` ends every ``work`` body still waiting out
    its ``seconds``: an in-process worker that was aborted or stopped past its grace leaves its task
    threads running (Python cannot stop them), and a test must not leave them to later tests."""
    app = TaskApp(settings=Settings.from_url(url, prefix=prefix))
    bodies = Bodies()
    app.bodies = bodies  # type: ignore[attr-defined]

    @app.task(name="work")
    def work(ident: str, seconds: float = 0.0) -> str:
        with bodies.running():
            _log(log_path, "start", ident)
            if seconds:
                bodies.released.wait(seconds)
            _log(log_path, "end", ident)
            return ident

    @app.task(name="gated")
    def gated(ident: str) -> str:  # runs until the test opens its gate: cancellable (short sleeps)
        _log(log_path, "start", ident)
        deadline = time.monotonic() + 120.0
        try:
            while not os.path.exists(gate(log_path, ident)) and time.monotonic() < deadline:
                time.sleep(0.02)
        except TaskCancelled:
            _log(log_path, "cancelled", ident)
            raise
        _log(log_path, "end", ident)
        return ident

    @app.task(name="boom", max_attempts=2)
    def boom() -> None:
        raise RuntimeError("boom")

    @app.task(name="boom5", max_attempts=5)
    def boom5() -> None:
        raise RuntimeError("boom5")

    @app.task(name="die")
    def die() -> None:
        time.sleep(0.1)
        os._exit(17)  # a poison task: kills its worker

    @app.task(name="die_now")
    def die_now() -> None:
        os._exit(17)  # kills its worker before it could announce `started`

    return app


def gate(log_path: str | None, ident: str) -> str:
    """The file whose existence lets the ``gated`` task ``ident`` end."""
    return f"{log_path}.{ident}.open"


def release_bodies(app: TaskApp, timeout: float = 10.0) -> None:
    """End the ``work`` bodies of ``app`` that still wait out their ``seconds`` (see ``make_app``),
    and wait until none runs."""
    bodies: Bodies = app.bodies  # type: ignore[attr-defined]
    bodies.released.set()
    with bodies.changed:
        assert bodies.changed.wait_for(lambda: bodies.count == 0, timeout), f"{bodies.count} task bodies still run"


def main() -> None:
    url, prefix, worker_id, conc, hb, log_path = sys.argv[1:7]
    app = make_app(url, prefix, log_path or None)
    worker = Worker(app, concurrency=int(conc), worker_id=worker_id, heartbeat_s=float(hb), grace=5.0)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    worker.start()
    print("ready", flush=True)
    done.wait()
    worker.stop()


def coordinator_main() -> None:
    """``python -c "from tests.chaos_tasks import coordinator_main; coordinator_main()" URL PREFIX DB HB``"""
    from mqtt_tasks.coordinator import Coordinator
    from mqtt_tasks.leases import LeasePolicy

    url, prefix, db, hb = sys.argv[1:5]
    policy = test_policy(float(hb))
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with Coordinator(Settings.from_url(url, prefix=prefix), db, policy=policy):
        print("ready", flush=True)
        done.wait()
    _ = LeasePolicy


def test_policy(heartbeat_s: float = 0.5, dispatch_timeout: float = 3.0):  # type: ignore[no-untyped-def]
    from mqtt_tasks.leases import LeasePolicy

    return LeasePolicy(lease_heartbeats=4, lease_slack=1.0, default_heartbeat_s=heartbeat_s,
                       dispatch_timeout=dispatch_timeout, timeout_grace=2.0, reconnect_grace=4.0,
                       backoff_base=0.2, backoff_cap=1.0)


test_policy.__test__ = False  # type: ignore[attr-defined]
