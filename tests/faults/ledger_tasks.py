"""Tasks for the fault-injection suite: every body appends to a ledger file, so executions are
counted from the task bodies themselves, across processes and restarts, not from events.

Run with ``mqtt-worker tests.faults.ledger_tasks:app --broker URL --prefix P`` and
``FAULTS_LEDGER=/path/to/ledger`` in the environment. A ledger line is
``start|end ID PID EPOCH``; ``end`` is written just before the body returns.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time

from mqtt_tasks import TaskApp

app = TaskApp()  # the broker and prefix come from the command line


def record(kind: str, ident: str) -> None:
    path = os.environ.get("FAULTS_LEDGER")
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{kind} {ident} {os.getpid()} {time.time():.3f}\n".encode())  # one write: atomic
    finally:
        os.close(fd)


@app.task(name="job")
def job(ident: str, seconds: float = 0.0) -> str:
    record("start", ident)
    if seconds:
        time.sleep(seconds)
    record("end", ident)
    return ident


@app.task(name="poison")
def poison(ident: str, how: str = "exit") -> None:
    """Kills the process that runs it: ``exit`` (os._exit), ``segv`` or ``kill`` (SIGKILL)."""
    record("start", ident)
    if how == "segv":
        ctypes.string_at(0)
    elif how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(17)
