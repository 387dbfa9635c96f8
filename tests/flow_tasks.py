"""Tasks and a worker entry point for the workflow tests (tests/test_workflows.py).

Every task body appends ``start`` / ``end`` lines (``task_id attempt pid``) to a ledger file, so a
test counts the runs of every step across processes and coordinator restarts from a source
independent of the coordinator. Worker process:
``python -c "from tests.flow_tasks import main; main()" URL PREFIX ID CONC HB LEDGER``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from mqtt_tasks import current_task
from mqtt_tasks.app import TaskApp
from mqtt_tasks.config import Settings
from mqtt_tasks.worker import Worker


def _write(ledger: str | None, kind: str) -> None:
    ctx = current_task()
    if ledger and ctx is not None:
        fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{kind} {ctx.id} {ctx.attempt} {os.getpid()}\n".encode())
        finally:
            os.close(fd)


def make_flow_app(url: str, prefix: str, ledger: str | None = None, receipts: bool = False) -> TaskApp:
    app = TaskApp(settings=Settings.from_url(url, prefix=prefix), receipts=receipts)

    def logged(fn: Callable[..., Any]) -> Callable[..., Any]:
        def body(*args: Any, seconds: float = 0.0, fail_until: int = 0, **kwargs: Any) -> Any:
            _write(ledger, "start")
            if seconds:
                time.sleep(seconds)
            ctx = current_task()
            if ctx is not None and ctx.attempt < fail_until:
                _write(ledger, "fail")
                raise RuntimeError(f"{fn.__name__} fails until attempt {fail_until}")
            result = fn(*args, **kwargs)
            _write(ledger, "end")
            return result
        body.__name__ = fn.__name__
        return body

    app.task(name="add")(logged(lambda a, b: a + b))
    app.task(name="mul")(logged(lambda a, b: a * b))
    app.task(name="total")(logged(lambda values: sum(values)))
    app.task(name="charge")(logged(lambda order, amount: f"ch-{order}-{amount}"))
    app.task(name="refund")(logged(lambda charge: f"refunded {charge}"))
    app.task(name="reserve")(logged(lambda order: f"r-{order}"))
    app.task(name="release")(logged(lambda reservation: f"released {reservation}"))

    @app.task(name="fail", max_attempts=1)
    def fail(what: str) -> None:
        _write(ledger, "start")
        raise RuntimeError(f"{what} failed")

    return app


def main() -> None:
    url, prefix, worker_id, conc, hb, ledger = sys.argv[1:7]
    worker = Worker(make_flow_app(url, prefix, ledger), concurrency=int(conc), worker_id=worker_id,
                    heartbeat_s=float(hb), grace=5.0)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    worker.start()
    print("ready", flush=True)
    done.wait()
    worker.stop()


def runs(ledger: str) -> dict[str, list[tuple[str, int, int]]]:
    """task id -> [(kind, attempt, pid), ...] in the order the ledger has them."""
    out: dict[str, list[tuple[str, int, int]]] = {}
    if not os.path.exists(ledger):
        return out
    with open(ledger) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 4:
                out.setdefault(parts[1], []).append((parts[0], int(parts[2]), int(parts[3])))
    return out


def count(ledger: str, kind: str) -> dict[str, int]:
    """task id -> how many ``kind`` lines it has."""
    counts = {task_id: sum(1 for k, _a, _p in lines if k == kind) for task_id, lines in runs(ledger).items()}
    return {task_id: n for task_id, n in counts.items() if n}
