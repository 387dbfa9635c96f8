"""``run_demo``: start the parts, run both phases, stop the parts, check the figures.

The parts start in the order a deployment would: broker, coordinator, then the watcher (so it
sees every worker's first heartbeat), the producer and the worker processes. They stop the
other way round; the coordinator's record is read once it has stopped, and checked against what
was submitted and what the watcher saw.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from ..config import Settings
from ..coordinator import Coordinator
from ..store import MemoryStore
from .fast import FastResult, fast_phase
from .fleet import BrokerProcess, WorkerFleet
from .recovery import RecoveryResult, recovery_phase
from .rig import Rig, Screen
from .tasks import build_demo_app
from .watch import Watcher

log = logging.getLogger(__name__)


@dataclass
class CoordinatorRecord:
    """What the coordinator's record says about the tasks the demo submitted."""

    submitted: int
    recorded: int = 0
    states: dict[str, int] = field(default_factory=dict)
    redispatched: int = 0  # records with a loss noted: dispatched again
    duplicates: int = 0  # late results of a superseded attempt, recorded and ignored
    reasons: list[str] = field(default_factory=list)  # why it dispatched them again, in its words
    noticed_at: float | None = None  # time.time() of the first loss it noted


@dataclass
class DemoResult:
    broker_url: str
    workers: list[str]
    concurrency: int
    fast: FastResult
    recovery: RecoveryResult
    coordinator: CoordinatorRecord | None = None

    @property
    def missing(self) -> int:
        """Submitted tasks that never got a final status event."""
        return self.fast.missing + self.recovery.missing

    def problems(self) -> list[str]:
        """What does not add up; empty when every task is accounted for."""
        out = [f"{self.missing} task(s) got no final status event"] if self.missing else []
        if self.fast.failed != self.fast.on_purpose:
            out.append(f"{self.fast.failed} fast task(s) failed, {self.fast.on_purpose} on purpose")
        record = self.coordinator
        if record is not None and record.recorded != record.submitted:
            out.append(f"the coordinator recorded {record.recorded} of {record.submitted} submitted tasks")
        if record is not None and sum(n for s, n in record.states.items() if s in ("succeeded", "dead")) \
                != record.recorded:
            out.append(f"the coordinator's record has unfinished tasks: {record.states}")
        return out


def run_demo(
    workers: int = 3,
    tasks: int = 2000,
    *,
    slow_tasks: int | None = None,
    concurrency: int = 8,
    coordinator: bool = True,
    kill_worker: bool = True,
    fail_every: int = 50,
    singles: int = 50,
    broker_url: str | None = None,
    prefix: str = "mqtt-tasks",
    screen: Screen | None = None,
) -> DemoResult:
    """Both phases on ``workers`` worker processes; an embedded broker (own process) unless ``broker_url``.

    ``tasks``: the fast phase's burst. ``slow_tasks``: the recovery phase's slow calls, by default
    as many as the workers but one have slots, so the survivors have room for the killed one's.
    """
    screen = screen or Screen()
    slow = slow_tasks if slow_tasks is not None else max(workers - 1, 1) * concurrency
    store = MemoryStore() if coordinator else None
    with ExitStack() as stack:
        url = broker_url or stack.enter_context(BrokerProcess())
        settings = Settings.from_url(url, prefix=prefix)
        if store is not None:
            stack.enter_context(Coordinator(settings, store=store))
        rig = _rig(stack, settings, workers, concurrency, store is not None, screen)
        rig.embedded = broker_url is None
        _announce(screen, settings, rig, concurrency)
        fast = fast_phase(rig, tasks, fail_every=fail_every, singles=singles)
        recovery = recovery_phase(rig, slow, kill=kill_worker)
    result = DemoResult(settings.display_url, rig.fleet.names, concurrency, fast, recovery)
    if store is not None:
        result.coordinator = read_record(store, rig.sent)
    screen.show(result)
    return result


def _rig(stack: ExitStack, settings: Settings, workers: int, concurrency: int, coordinated: bool,
         screen: Screen) -> Rig:
    watcher = stack.enter_context(Watcher(settings))
    app = build_demo_app(settings)
    stack.callback(app.close)
    fleet = stack.enter_context(WorkerFleet(settings.url, settings.prefix, workers, concurrency))
    return Rig(app, watcher, fleet, coordinated, screen)


def _announce(screen: Screen, settings: Settings, rig: Rig, concurrency: int) -> None:
    where = "the embedded broker (amqtt, its own process)" if rig.embedded else "the broker"
    parts = [f"{len(rig.fleet.names)} worker processes x {concurrency} slots"]
    parts.insert(0, "a coordinator (in memory)" if rig.coordinated else "no coordinator")
    screen.say(f"running: {where} on {settings.display_url}, {', '.join(parts)}")


def read_record(store: Any, ids: set[str]) -> CoordinatorRecord:
    """The coordinator's record of ``ids`` (read once the coordinator has stopped)."""
    record = CoordinatorRecord(submitted=len(ids))
    states: dict[str, int] = {}
    reasons: dict[str, None] = {}
    for task_id in sorted(ids):
        task = store.get(task_id)
        if task is None:
            continue
        record.recorded += 1
        states[task.state] = states.get(task.state, 0) + 1
        record.duplicates += task.duplicates
        losses = [note for note in task.history if note.get("event") == "lost"]
        record.redispatched += bool(losses)
        for note in losses:
            reasons.setdefault(str(note.get("reason", "")))
            ts = note.get("ts")
            if isinstance(ts, (int, float)) and (record.noticed_at is None or ts < record.noticed_at):
                record.noticed_at = float(ts)
    record.states = dict(sorted(states.items()))
    record.reasons = list(reasons)
    return record
