"""A cluster of real processes to inject faults into, and the three counts of what happened.

Mosquitto runs from the repository's mosquitto.conf on free ports (tests/brokers.py); the
coordinator and the workers are the installed command-line tools (``mqtt-tasks coordinator``,
``mqtt-worker``), as users run them; a producer is a ``TaskApp``. What each task became is read
three ways and compared by ``Cluster.verdict``: the status events on ``P/status/+`` (an observer
that subscribed before anything was submitted), the ledger the task bodies write
(``ledger_tasks.py``), and the coordinator's record in its SQLite file, read after it stopped.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mqtt_tasks import Settings, TaskApp
from mqtt_tasks.protocol.states import TERMINAL_STATES
from mqtt_tasks.transport import Connection, Message
from tests.brokers import MosquittoProcess, wait_until

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent.parent
APP = "tests.faults.ledger_tasks:app"
HEARTBEAT = 0.5


def cli(name: str) -> list[str]:
    """The installed console script next to this Python (``mqtt-worker``, ``mqtt-tasks``)."""
    script = BIN / name
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "mqtt_tasks"] + (["worker"] if name == "mqtt-worker" else [])


class Process:
    """A CLI child process whose output goes to a log file; ``started`` waits for its ready line."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str]) -> None:
        self.name, self.log = name, log
        self._out = open(log, "ab")  # noqa: SIM115 - closed in reap()
        self.popen = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self._out, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def started(self, needle: str = "ready", timeout: float = 30.0) -> Process:
        wait_until(lambda: needle in self.text() or self.popen.poll() is not None, timeout,
                   message=f"{self.name} never printed {needle!r}")
        assert self.popen.poll() is None, f"{self.name} exited:\n{self.text()[-3000:]}"
        return self

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def signal_tree(self, sig: int) -> None:
        """Signal every process of this one's tree, its children first, as systemd's default stop
        (``KillMode=control-group``) does: the children get it straight from the service manager,
        whether or not their supervisor forwards it too (they run in sessions of their own, so a
        process-group signal would not reach them)."""
        for pid in [*descendants(self.popen.pid), self.popen.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.reap()

    def reap(self, timeout: float = 60.0) -> int:
        code = self.popen.wait(timeout)
        self._out.close()
        return code


def descendants(pid: int) -> list[int]:
    """The pids of ``pid``'s descendants, deepest first (read from /proc)."""
    parents: dict[int, list[int]] = collections.defaultdict(list)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name may hold spaces and parentheses
        parents[ppid].append(int(entry.name))
    return descendants_of(parents, pid)


def descendants_of(parents: dict[int, list[int]], pid: int) -> list[int]:
    found: list[int] = []
    for child in parents.get(pid, []):
        found += [*descendants_of(parents, child), child]
    return found


@dataclass
class Observer:
    """Every status event on ``P/status/+``, by task id."""

    events: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: collections.defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_final: float = 0.0  # time.monotonic() the latest final event arrived

    def on_message(self, message: Message) -> None:
        event = json.loads(message.payload)
        with self.lock:
            self.events[event["id"]].append(event)
            if event.get("state") in TERMINAL_STATES or event.get("final"):
                self.last_final = time.monotonic()

    def finals(self, task_id: str) -> list[dict[str, Any]]:
        """The events that end the task: a terminal state, or a final ``failed`` (no coordinator)."""
        with self.lock:
            return [e for e in self.events.get(task_id, ()) if e["state"] in TERMINAL_STATES or e.get("final")]


@dataclass
class Verdict:
    submitted: int
    outcomes: collections.Counter[str]       # the state of each task's (first) final event
    lost: list[str]                          # no final event at all
    several_finals: list[str]                # more than one final event with different states
    executions: collections.Counter[str]     # completed runs per task id, from the ledger
    record: dict[str, str]                   # the coordinator's record: id -> state
    recovery: float | None = None            # seconds from the (first) fault to the last final event

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.executions.values() if n > 1)

    def summary(self) -> str:
        recovered = f", all done {self.recovery:.1f} s after the fault" if self.recovery is not None else ""
        return (f"submitted {self.submitted}, outcomes {dict(self.outcomes)}, lost {len(self.lost)}, "
                f"several finals {len(self.several_finals)}, duplicates {self.duplicates}{recovered}")


class Cluster:
    """Mosquitto, a coordinator, workers and a producer on one prefix, with a ledger."""

    def __init__(self, mosquitto: MosquittoProcess, workdir: Path) -> None:
        self.mosquitto, self.workdir = mosquitto, workdir
        self.prefix = f"f{uuid.uuid4().hex[:10]}"
        self.ledger = workdir / "ledger"
        self.db: Path | str = workdir / "coordinator.db"  # a scenario may point it elsewhere (a postgresql:// URL)
        self.observer = Observer()
        self.procs: list[Process] = []
        self.submitted: list[str] = []
        self.fault_at: float | None = None
        self._watch = Connection(Settings.from_url(mosquitto.url, prefix=self.prefix), f"observer-{self.prefix}",
                                 on_message=self.observer.on_message, session_expiry=3600)
        self._watch.subscribe(f"{self.prefix}/status/+")
        self._watch.connect()
        self.app = TaskApp(mosquitto.url, prefix=self.prefix)

    @property
    def watching(self) -> bool:
        """The observer is connected. After a broker crash that lost its session, what is published
        before it reconnects (and subscribes again) is never seen: wait for this first."""
        return self._watch.connected

    # -- processes ----------------------------------------------------------------------
    def env(self, *, clock_skew: float = 0.0, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "MQTT_TASKS_BROKER"}
        path = str(ROOT) if not clock_skew else f"{ROOT / 'tests' / 'faults' / 'skew'}{os.pathsep}{ROOT}"
        return {**env, "FAULTS_LEDGER": str(self.ledger), "PYTHONPATH": path,
                "FAULTS_CLOCK_SKEW": str(clock_skew), **extra}

    def coordinator(self, *args: str, env: dict[str, str] | None = None, wait: bool = True) -> Process:
        argv = [*cli("mqtt-tasks"), "coordinator", "--broker", self.mosquitto.url, "--prefix", self.prefix,
                "--db", str(self.db), *args]
        proc = Process("coordinator", argv, self.workdir / "coordinator.log", env or self.env())
        self.procs.append(proc)
        return proc.started() if wait else proc

    def worker(self, name: str, *args: str, url: str | None = None, concurrency: int = 4,
               env: dict[str, str] | None = None) -> Process:
        argv = [*cli("mqtt-worker"), APP, "--broker", url or self.mosquitto.url, "--prefix", self.prefix,
                "--worker-id", name, "--heartbeat", str(HEARTBEAT), "--concurrency", str(concurrency), *args]
        proc = Process(name, argv, self.workdir / f"{name}.log", env or self.env())
        self.procs.append(proc)
        return proc.started()

    # -- tasks --------------------------------------------------------------------------
    def submit(self, count: int, seconds: float = 0.0, *, name: str = "job", **options: Any) -> list[str]:
        ids = []
        for _ in range(count):
            ident = f"{name}-{uuid.uuid4().hex[:12]}"
            args = (ident, seconds) if name == "job" else (ident, options.pop("how", "exit"))
            self.app.send(name, args, task_id=ident, extra=options or None)
            ids.append(ident)
        assert self.app.flush(30), "the broker did not acknowledge every task"
        self.submitted += ids
        return ids

    def wait_finished(self, ids: Iterable[str] | None = None, timeout: float = 60.0) -> None:
        pending = list(ids if ids is not None else self.submitted)
        wait_until(lambda: all(self.observer.finals(i) for i in pending), timeout, interval=0.05,
                   message=f"{sum(not self.observer.finals(i) for i in pending)} of {len(pending)} tasks "
                           f"never finished")

    # -- counting -----------------------------------------------------------------------
    def ledger_lines(self, kind: str) -> list[tuple[str, int]]:
        """(task id, pid) of every ``start`` or ``end`` line the task bodies wrote."""
        lines = self.ledger.read_text().splitlines() if self.ledger.exists() else []
        return [(words[1], int(words[2])) for words in map(str.split, lines) if words[0] == kind]

    def executions(self) -> collections.Counter[str]:
        return collections.Counter(ident for ident, _ in self.ledger_lines("end"))

    def started_by(self, proc: Process) -> int:
        return sum(1 for _, pid in self.ledger_lines("start") if pid == proc.popen.pid)

    def record(self) -> dict[str, str]:
        """The coordinator's record, read from its file or PostgreSQL database (stop the coordinator first)."""
        from mqtt_tasks.store.opening import is_postgres, open_store

        location = str(self.db)
        if not is_postgres(location) and not Path(location).exists():
            return {}
        store = open_store(location)
        try:
            return {r.id: r.state for r in store.list_tasks(limit=1_000_000)}
        finally:
            store.close()

    def verdict(self) -> Verdict:
        outcomes: collections.Counter[str] = collections.Counter()
        lost, several = [], []
        for ident in self.submitted:
            finals = self.observer.finals(ident)
            if not finals:
                lost.append(ident)
                continue
            outcomes[finals[0]["state"]] += 1
            if len({e["state"] for e in finals}) > 1:
                several.append(ident)
        recovery = self.observer.last_final - self.fault_at if self.fault_at is not None else None
        return Verdict(len(self.submitted), outcomes, lost, several, self.executions(), self.record(), recovery)

    def mark_fault(self) -> None:
        """The fault is injected now: the verdict says how long after it the last task ended."""
        if self.fault_at is None:
            self.fault_at = time.monotonic()

    def close(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is None:
                proc.kill()
        self.app.close()
        self._watch.close()
