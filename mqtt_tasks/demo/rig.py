"""What the demo's phases run on, and what they share: submitting, waiting, counting, telling.

``Rig`` holds the running parts (producer, watcher, worker processes); ``Screen`` is how a phase
talks to its viewer (the CLI's draws with rich, the default one is silent).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from ..app import TaskApp
from .fleet import WorkerFleet
from .tasks import ON_PURPOSE, Plan, on_purpose
from .watch import Watcher

Progress = Callable[[int], None]


class Screen:
    """What the demo tells its viewer while it runs. This one tells nobody (library use, tests)."""

    def phase(self, title: str, lines: Sequence[str]) -> None:
        """A phase begins: its title and what it is about to show."""

    def say(self, text: str) -> None:
        """Something happened that the viewer should know about, as it happens."""

    def progress(self, label: str, total: int) -> AbstractContextManager[Progress]:
        return nullcontext(lambda done: None)

    def show(self, result: Any) -> None:
        """A phase's figures, once it is over."""


@dataclass
class Rig:
    """What the phases run on."""

    app: TaskApp
    watcher: Watcher
    fleet: WorkerFleet
    coordinated: bool
    screen: Screen
    embedded: bool = True  # the broker is the demo's own embedded one
    sent: set[str] = field(default_factory=set)  # every task id published, for the final cross-check

    def submit(self, plan: Plan, tag: str, start: int = 1) -> dict[str, float]:
        """Publish the plan; returns task id -> monotonic time just before its publish."""
        sent: dict[str, float] = {}
        for i, (name, args) in enumerate(plan):
            task_id = f"{tag}-{start + i}-{uuid.uuid4().hex[:8]}"
            sent[task_id] = time.monotonic()
            self.app.send(name, args, task_id=task_id, options=ON_PURPOSE if on_purpose(name, args) else None)
        self.sent.update(sent)
        return sent


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def wait_until(watcher: Watcher, ids: set[str], deadline: float, progress: Progress,
               step: Callable[[], None] = lambda: None) -> None:
    """Pump the watcher until every task in ``ids`` has a final event (or the deadline)."""
    while time.monotonic() < deadline:
        watcher.pump(0.05)
        step()
        done = watcher.done(ids)
        progress(done)
        if done == len(ids):
            return


def outcomes(watcher: Watcher, ids: set[str]) -> tuple[int, int, int]:
    """(succeeded, other final states, no final event) over ``ids``."""
    states = Counter(watcher.finals[i][1].state for i in ids if i in watcher.finals)
    succeeded = states.pop("succeeded", 0)
    return succeeded, sum(states.values()), len(ids) - watcher.done(ids)
