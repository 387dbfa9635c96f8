"""Worker processes (each its own MQTT client in one share group), SIGTERM and kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tasks_fixture import DEADLINE, Harness

ROOT = Path(__file__).resolve().parent.parent


class WorkerProcess:
    """`python -c` running tests.tasks_fixture.run_worker; READY on stdout once it takes tasks."""

    def __init__(self, url: str, prefix: str, worker_id: str, concurrency: int = 2) -> None:
        self.worker_id = worker_id
        code = ("from tests.tasks_fixture import run_worker; "
                f"run_worker({url!r}, {prefix!r}, {worker_id!r}, concurrency={concurrency})")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._read, name=f"read-{worker_id}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("READY"):
                self.ready.set()

    def wait_ready(self) -> None:
        if not self.ready.wait(DEADLINE):
            self.proc.kill()
            self.proc.wait()
            err = self.stderr()
            raise AssertionError(f"worker {self.worker_id} never became ready:\n{err[-3000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def stderr(self) -> str:
        return self.proc.stderr.read() if self.proc.stderr else ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(DEADLINE)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def spawn(broker_url: str, prefix: str) -> Iterator[list[WorkerProcess]]:
    procs: list[WorkerProcess] = []
    yield procs
    for proc in procs:
        proc.close()


def _start(procs: list[WorkerProcess], url: str, prefix: str, count: int) -> list[WorkerProcess]:
    new = [WorkerProcess(url, prefix, f"proc{i}-{prefix}") for i in range(count)]
    procs.extend(new)
    for proc in new:
        proc.wait_ready()
    return new


def test_worker_processes_share_one_queue(broker_url: str, prefix: str, spawn: list[WorkerProcess]) -> None:
    workers = _start(spawn, broker_url, prefix, 3)
    with Harness(broker_url, prefix) as h:
        status = h.listener(h.topics.all_status)
        handles = [h.app.registry["whoami"].submit() for _ in range(60)]
        pids = Counter(x.result(DEADLINE) for x in handles)
        assert set(pids) == {w.proc.pid for w in workers}, f"tasks per process: {dict(pids)}"
        assert os.getpid() not in pids
        status.wait_finished(h.topics.status(x.id) for x in handles)
        for handle in handles:
            runs = [m for m in status.on(h.topics.status(handle.id)) if m.json()["state"] == "succeeded"]
            assert len(runs) == 1, f"task {handle.id} ran {len(runs)} times"
        for worker in workers:
            code = worker.stop()
            assert code == 0, f"{worker.worker_id} exited {code}:\n{worker.stderr()[-3000:]}"


def test_sigterm_publishes_offline_and_kill_9_fires_the_last_will(broker_url: str, prefix: str,
                                                                  spawn: list[WorkerProcess]) -> None:
    graceful, crashed = _start(spawn, broker_url, prefix, 2)
    with Harness(broker_url, prefix) as h:
        watcher = h.listener(h.topics.all_workers)
        for proc in (graceful, crashed):
            watcher.wait_json(h.topics.worker(proc.worker_id), lambda s: s["state"] == "online")
        assert graceful.stop() == 0
        state = watcher.wait_json(h.topics.worker(graceful.worker_id), lambda s: s["state"] == "offline")
        assert state["pid"] == graceful.proc.pid
        crashed.proc.kill()  # SIGKILL: nothing runs in the worker, only the broker's Last Will
        crashed.proc.wait(DEADLINE)
        will = watcher.wait_json(h.topics.worker(crashed.worker_id), lambda s: s["state"] == "offline")
        assert will["worker"] == crashed.worker_id and will["tasks"] == []
