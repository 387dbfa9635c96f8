"""The record the coordinator keeps for every schedule (periodic task), beside its task records.

A schedule's definition (what to run, when, and its overlap and catch-up policies) is what a
client sends (``protocol.messages.Schedule``); the rest is the coordinator's bookkeeping, kept in
the same store and committed in the same transaction as the task records of its fires, so that a
fire is recorded before it is published and never fired twice after a restart (docs/scheduling.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

DEFINITION = ("name", "task", "args", "kwargs", "queue", "cron", "every", "timezone", "overlap", "catchup",
              "catchup_window", "max_attempts", "timeout")
"""The fields a client defines; a put that changes none of them changes nothing."""


@dataclass
class ScheduleRecord:
    """One schedule: its definition and what the coordinator has done with it."""

    name: str
    task: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue: str = "default"
    cron: str | None = None
    every: int | None = None
    timezone: str = "UTC"
    overlap: str = "skip"
    catchup: str = "last"
    catchup_window: float = 3600.0
    max_attempts: int | None = None
    timeout: float | None = None
    source: str | None = None          # who put it: "cli", "code", or a client's own word
    created: float = 0.0
    updated: float = 0.0
    last_fire: float = 0.0             # every fire time up to this one has been judged (run or skipped)
    next_fire: float | None = None     # the next fire time (None: never again)
    buffered: float | None = None      # overlap buffer_one: the fire time waiting for the running one
    active: list[str] = field(default_factory=list)  # ids of fired tasks not known to be finished
    fired: int = 0
    skipped: int = 0
    last_task: str | None = None

    def definition(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in DEFINITION}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScheduleRecord:
        return cls(**{k: v for k, v in data.items() if k in _FIELD_SET})


_FIELD_SET = frozenset(f.name for f in dataclasses.fields(ScheduleRecord))
