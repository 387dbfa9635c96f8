"""The demo's child processes: the embedded broker and the workers, each a real process.

A worker has to be a process of its own to be killed with SIGKILL the way a crashed machine
dies: no ``finally``, no goodbye, its TCP connection closed by the kernel. The embedded broker
runs in a process of its own too, as in the embedded-amqtt row of docs/benchmarks.md, so it does
not share a GIL with the producer, the coordinator and the demo's watcher.

Children are ``python -m mqtt_tasks.demo broker`` and ``python -m mqtt_tasks.demo worker ...``;
each prints one ``ready ...`` line once it serves, and stops cleanly on SIGTERM, or when its
stdin (a pipe from the demo) closes: a demo that dies, however it dies, leaves no child behind.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..config import Settings
from ..errors import MqttTasksError
from ..supervisor import serve
from ..worker import Worker
from .tasks import build_demo_app

START_TIMEOUT_S = 30.0
WORKER_HEARTBEAT_S = 0.5  # a lease then lasts ~3 s: see the recovery phase's missed-heartbeat path


class Child:
    """One child process that announces itself with a ``ready ...`` line on stdout."""

    def __init__(self, name: str, *args: str) -> None:
        self.name = name
        self.proc = subprocess.Popen([sys.executable, "-m", "mqtt_tasks.demo", *args], env=_child_env(),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.killed_at: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, deadline: float) -> str:
        """The rest of the ``ready`` line; MqttTasksError when the child exits or stays silent."""
        out = self.proc.stdout
        assert out is not None
        readable, _, _ = select.select([out], [], [], max(0.0, deadline - time.monotonic()))
        line = out.readline().decode(errors="replace").strip() if readable else ""
        if not line.startswith("ready"):
            why = f"exit code {self.proc.poll()}" if self.proc.poll() is not None else "no ready line in time"
            raise MqttTasksError(f"demo {self.name} did not start ({why})")
        return line.removeprefix("ready").strip()

    def kill(self) -> None:
        """SIGKILL: the process ends at once, holding whatever it held."""
        self.killed_at = time.monotonic()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


def _child_env() -> dict[str, str]:
    """This process's environment, with this copy of mqtt_tasks first on the children's path."""
    here = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    return env


class BrokerProcess:
    """``with BrokerProcess() as url:`` the embedded broker on 127.0.0.1, an ephemeral port."""

    def __enter__(self) -> str:
        self.child = Child("broker", "broker")
        try:
            return self.child.wait_ready(time.monotonic() + START_TIMEOUT_S)
        except BaseException:
            self.child.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.child.stop()


class WorkerFleet:
    """``count`` worker processes, ``demo-worker-1`` ... ``demo-worker-N``, started in parallel."""

    def __init__(self, url: str, prefix: str, count: int, concurrency: int) -> None:
        self.concurrency = concurrency
        self.children = {f"demo-worker-{i + 1}": Child(f"worker {i + 1}", "worker", url, prefix,
                                                      f"demo-worker-{i + 1}", str(concurrency))
                         for i in range(count)}

    def __enter__(self) -> WorkerFleet:
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            for child in self.children.values():
                child.wait_ready(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def names(self) -> list[str]:
        return list(self.children)

    def pid(self, worker: str) -> int:
        return self.children[worker].pid

    def kill(self, worker: str) -> float:
        """SIGKILL one worker; returns the monotonic time of the kill."""
        child = self.children[worker]
        child.kill()
        assert child.killed_at is not None
        return child.killed_at

    def stop(self) -> None:
        for child in self.children.values():
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)  # all at once: they drain in parallel
        for child in self.children.values():
            child.stop()


# -- child-process entry points (python -m mqtt_tasks.demo ...) --------------------------------
def _stop_with_parent() -> None:
    """SIGTERM to this process once stdin closes: the demo ended (or died) without stopping us."""
    def watch() -> None:
        sys.stdin.buffer.read()
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="demo-parent-watch", daemon=True).start()


def serve_broker() -> None:
    from ..broker import run_broker  # the optional extra

    _stop_with_parent()
    run_broker("127.0.0.1", 0, ready=lambda broker: print(f"ready {broker.url}?protocol=3.1.1", flush=True))


def serve_worker(url: str, prefix: str, worker_id: str, concurrency: int) -> None:
    settings = Settings.from_url(url, prefix=prefix, heartbeat_s=WORKER_HEARTBEAT_S)
    worker = Worker(build_demo_app(settings), worker_id=worker_id, concurrency=concurrency, grace=5.0)
    _stop_with_parent()
    serve(worker, on_ready=lambda _: print("ready", flush=True))
