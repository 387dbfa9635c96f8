"""Helpers shared by the coordinator tests: in-process workers and coordinators, subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mqtt_tasks import TaskApp
from mqtt_tasks.config import Settings
from mqtt_tasks.coordinator import Coordinator
from mqtt_tasks.worker import Worker
from tests.chaos_tasks import make_app, release_bodies, test_policy

HB = 0.5
ROOT = str(Path(__file__).resolve().parent.parent)


def settings(url: str, prefix: str) -> Settings:
    return Settings.from_url(url, prefix=prefix)


@contextmanager
def coordinator(url: str, prefix: str, store: object = None, **kw: object) -> Iterator[Coordinator]:
    c = Coordinator(settings(url, prefix), store, policy=kw.pop("policy", test_policy(HB)), **kw)  # type: ignore[arg-type]
    c.start()
    try:
        yield c
    finally:
        c.stop()


@contextmanager
def worker(url: str, prefix: str, worker_id: str, concurrency: int = 2, log: str | None = None,
           **options: Any) -> Iterator[Worker]:
    app = make_app(url, prefix, log)
    w = Worker(app, concurrency=concurrency, worker_id=worker_id, heartbeat_s=HB, grace=2.0, **options)
    w.start()
    try:
        yield w
    finally:
        w.stop(grace=2.0)
        release_bodies(app)  # bodies of an aborted worker, or handed back past the grace, end here too


@contextmanager
def registry_worker(url: str, prefix: str, worker_id: str, registry: dict[str, Any],
                    **options: Any) -> Iterator[Worker]:
    """A worker in this process running the tasks of ``registry`` (another test module's app)."""
    app = TaskApp(broker=url, prefix=prefix)
    app.registry.update(registry)
    w = Worker(app, worker_id=worker_id, grace=2.0, **options)
    w.start()
    try:
        yield w
    finally:
        w.stop(grace=2.0)
        app.close()


def spawn(fn: str, *args: str) -> subprocess.Popen[str]:
    """A subprocess running ``tests.chaos_tasks.<fn>()`` with argv; returns after it prints ready."""
    code = f"from tests.chaos_tasks import {fn}; {fn}()"
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = proc.stdout.readline() if proc.stdout else ""
    if proc.stdout:
        proc.stdout.close()  # the child prints nothing more
    assert line.strip() == "ready", f"{fn} did not start: {line!r}"
    return proc


def spawn_worker(url: str, prefix: str, worker_id: str, concurrency: int, log: str) -> subprocess.Popen[str]:
    return spawn("main", url, prefix, worker_id, str(concurrency), str(HB), log)


def spawn_coordinator(url: str, prefix: str, db: str) -> subprocess.Popen[str]:
    return spawn("coordinator_main", url, prefix, db, str(HB))


def executions(log: str) -> dict[str, list[tuple[str, int]]]:
    """task ident -> [(kind, pid), ...] from a task log."""
    out: dict[str, list[tuple[str, int]]] = {}
    if not os.path.exists(log):
        return out
    with open(log) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3:
                out.setdefault(parts[1], []).append((parts[0], int(parts[2])))
    return out
