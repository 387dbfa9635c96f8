"""Child processes of a bench run: start, wait until ready, and always clean up.

Every child is registered in ``Procs``; ``Procs.close`` (also run at exit and on SIGTERM)
terminates them all, then kills what did not exit within a few seconds.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
LOG_DIR = ROOT / "bench" / "results" / "logs"


class ProcError(RuntimeError):
    pass


class Child:
    """One child process; its output goes to a log file, where a line ``READY {json}`` (or
    ``ready_marker``) says it can take traffic."""

    _seq = 0

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None,
                 ready_marker: str | None = "READY") -> None:
        self.name = name
        self.argv = argv
        self.ready_marker = ready_marker
        self.info: dict[str, Any] = {}
        Child._seq += 1
        self.log_path = LOG_DIR / f"{Child._seq:03d}-{name}.log"
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                    "PYTHONUNBUFFERED": "1", **(env or {})}
        with self.log_path.open("w") as log:
            self.started_at = time.perf_counter()
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=ROOT, env=full_env)
        self.ready_after: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float = 30.0, marker: str | None = None, count: int = 1) -> float:
        """Seconds from exec to the ``count``-th ready line; raises on exit or timeout."""
        marker = marker or self.ready_marker or "READY"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = [line for line in self.output().splitlines() if marker in line]
            if len(lines) >= count:
                self.ready_after = time.perf_counter() - self.started_at
                first = lines[0]
                if first.startswith("READY "):
                    self.info = json.loads(first[6:])
                return self.ready_after
            if self.proc.poll() is not None:
                break
            time.sleep(0.005)
        tail = "\n".join(self.output().splitlines()[-20:])
        raise ProcError(f"{self.name} not ready within {timeout}s (exit code {self.proc.poll()}):\n{tail}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            except ProcessLookupError:
                pass


class Procs:
    """All children of this bench run. ``close`` stops every one of them."""

    _all: list[Child] = []

    @classmethod
    def start(cls, name: str, argv: list[str], **kw: Any) -> Child:
        child = Child(name, argv, **kw)
        cls._all.append(child)
        return child

    @classmethod
    def role(cls, role: str, *args: str, name: str | None = None) -> Child:
        argv = [PY, "-m", "bench.procs", role, "--parent-pid", str(os.getpid()), *args]
        return cls.start(name or role, argv)

    @classmethod
    def stop(cls, *children: Child) -> None:
        for child in children:
            child.stop()
            if child in cls._all:
                cls._all.remove(child)

    @classmethod
    def close(cls) -> None:
        for child in list(cls._all):
            if child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 8
        for child in list(cls._all):
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait(5)
        cls._all.clear()


def install_cleanup() -> None:
    atexit.register(Procs.close)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds through every `finally`, then atexit

    signal.signal(signal.SIGTERM, on_term)


def rss_mb(pid: int, children: bool = False) -> float:
    import psutil
    p = psutil.Process(pid)
    rss = p.memory_info().rss
    if children:
        rss += sum(c.memory_info().rss for c in p.children(recursive=True))
    return rss / 1e6


def cpu_s(pid: int, children: bool = False) -> float:
    import psutil
    p = psutil.Process(pid)
    t = p.cpu_times()
    total = t.user + t.system
    if children:
        for c in p.children(recursive=True):
            ct = c.cpu_times()
            total += ct.user + ct.system
    return total
