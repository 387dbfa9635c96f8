"""Tasks for the rollout tests (tests/test_deploy.py): the code a worker starts with, and the source
of the bundles the tests sign. Every body appends one line to a ledger (``DEPLOY_LEDGER``):
``begin|end IDENT WORKER VERSION``, so which version ran each task is read from the task bodies.

Run with ``mqtt-worker tests.deploy_tasks:app --accept-deploys --deploy-key PUB --deploy-dir DIR``.
"""

from __future__ import annotations

import os
import time

from mqtt_tasks import TaskApp, current_task

app = TaskApp()  # the broker and prefix come from the command line
VERSION = "local"

BUNDLE = '''"""Bundle {version} of the rollout tests: like tests/deploy_tasks.py, with its own version."""
import os
import time

from mqtt_tasks import TaskApp, current_task

VERSION = "{version}"
if VERSION in os.environ.get("DEPLOY_BREAK", "").split(","):  # this worker lacks what the version needs
    raise ImportError("no camera driver on this worker")

app = TaskApp()


@app.task(name="which")
def which(ident, gate=None):
    context = current_task()
    line = "{{}} " + ident + " " + (context.worker if context else "?") + " " + VERSION + "\\n"
    ledger = os.environ.get("DEPLOY_LEDGER")
    if ledger:
        with open(ledger, "a") as out:
            out.write(line.format("begin"))
    deadline = time.monotonic() + 30
    while gate and not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)
    if ledger:
        with open(ledger, "a") as out:
            out.write(line.format("end"))
    return VERSION
'''
"""The source of a bundle (``BUNDLE.format(version=...)``): task ``which`` saying its version."""


def write(line: str) -> None:
    ledger = os.environ.get("DEPLOY_LEDGER")
    if ledger:
        with open(ledger, "a") as out:
            out.write(line)


@app.task(name="which")
def which(ident: str, gate: str | None = None) -> str:
    """Record ``begin`` and ``end`` of ``ident`` with this code's version; wait for ``gate`` to exist between."""
    context = current_task()
    worker = context.worker if context else "?"
    write(f"begin {ident} {worker} {VERSION}\n")
    deadline = time.monotonic() + 30
    while gate and not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)
    write(f"end {ident} {worker} {VERSION}\n")
    return VERSION


def ledger(path: str) -> list[tuple[str, str, str, str]]:
    """(begin|end, ident, worker, version) per line of the ledger."""
    if not os.path.exists(path):
        return []
    with open(path) as lines:
        return [tuple(line.split()) for line in lines if line.strip()]  # type: ignore[misc]
