"""Tasks for the routing and offline-device tests: every body appends ``ident worker`` to a ledger
file, so who ran what is counted from the task bodies themselves, across processes.

Run with ``mqtt-worker tests.routing_tasks:app --broker URL --prefix P --label gpu`` and
``ROUTING_LEDGER=/path/to/ledger`` in the environment.
"""

from __future__ import annotations

import os
import time

from mqtt_tasks import TaskApp, current_task

app = TaskApp()  # the broker and prefix come from the command line


def record(ident: str) -> str:
    context = current_task()
    worker = context.worker if context is not None else "?"
    path = os.environ.get("ROUTING_LEDGER")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{ident} {worker} {os.getpid()}\n".encode())  # one write: atomic
        finally:
            os.close(fd)
    return worker


@app.task(name="where")
def where(ident: str, seconds: float = 0.0) -> str:
    """Record which worker ran ``ident`` and return that worker's id (after ``seconds``)."""
    if seconds:
        time.sleep(seconds)
    return record(ident)


@app.task(name="offline_job")
def offline_job(ident: str, seconds: float = 0.0) -> str:
    """Record ``start:ident``, run ``seconds``, record ``ident``; returns ``ident@pid``, so a result
    says which worker process computed it."""
    record(f"start:{ident}")
    if seconds:
        time.sleep(seconds)
    record(ident)
    return f"{ident}@{os.getpid()}"


def runs_by_pid(path: str) -> dict[str, list[int]]:
    """ident -> the pids of the processes that ran it to the end."""
    out: dict[str, list[int]] = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                ident, _worker, pid = line.split()
                out.setdefault(ident, []).append(int(pid))
    return out


def ledger(path: str) -> dict[str, list[str]]:
    """ident -> the workers that ran it, in order, from a ledger file."""
    out: dict[str, list[str]] = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                ident, worker, _pid = line.split()
                out.setdefault(ident, []).append(worker)
    return out
