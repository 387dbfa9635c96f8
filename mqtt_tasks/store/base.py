"""The store interface and the record it keeps for every task.

A store buffers ``put`` calls and makes them durable on ``commit``: the coordinator commits a
batch of records, then acknowledges the MQTT messages that produced them, so a crash loses
nothing that was acknowledged. ``get`` and ``list_tasks`` see uncommitted puts too.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# Record states (protocol/states.py). ``queued``: seen on P/tasks, no worker has reported it yet.
# ``dispatched``: the coordinator sent it to one worker's inbox. ``started``: a worker holds it under
# a lease. ``backlog``: the coordinator holds it until a worker has a free slot (on the wire:
# ``deferred``). ``retrying``: waiting out a backoff before the next attempt. ``scheduled``: held
# until its ``not_before`` time (docs/scheduling.md).
from ..protocol.states import (  # noqa: F401 - re-exported for the store's users
    BACKLOG,
    CANCELLED,
    DEAD,
    DISPATCHED,
    EXPIRED,
    LIVE_RECORD_STATES,
    QUEUED,
    RETRYING,
    SCHEDULED,
    STARTED,
    SUCCEEDED,
    TERMINAL_STATES,
)
from .listing import Key
from .schedules import ScheduleRecord
from .workflows import WorkflowRecord

LIVE_STATES = LIVE_RECORD_STATES
TERMINAL = TERMINAL_STATES

MAX_HISTORY = 50


@dataclass
class TaskRecord:
    """Everything the coordinator knows about one task."""

    id: str
    state: str = QUEUED
    attempt: int = 1                # the highest attempt issued: the fencing token
    failures: int = 0               # attempts that failed, or killed their worker while running alone
    losses: int = 0                 # times lost with a worker that died or went silent (suspect: runs alone)
    kills: int = 0                  # of those, times it was running alone: it killed its worker
    task: str | None = None
    queue: str = "default"
    body: dict[str, Any] | None = None  # the task as published (None when only status events were seen)
    worker: str | None = None       # the worker holding / dispatched the current attempt
    max_attempts: int | None = None
    timeout: float | None = None
    expires_at: float | None = None
    reply_to: str | None = None
    response_topic: str | None = None
    correlation_data: str | None = None  # MQTT 5 Correlation Data, hex
    correlation: str | None = None
    created: float = 0.0
    updated: float = 0.0
    deadline: float | None = None   # when this state's timer fires (dispatch, lease, retry)
    run_deadline: float | None = None  # started + timeout + grace
    started_at: float | None = None
    winner: dict[str, Any] | None = None  # {"attempt", "worker"} of the terminal result
    result: Any = None
    error: dict[str, Any] | None = None
    reason: str | None = None
    duplicates: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    not_before: float | None = None  # the task's own: not started before then (scheduled until)
    priority: int | None = None     # the task's own: orders the backlog (None: the default, 5)
    step_timeout: float | None = None  # a started attempt must report progress this often
    step_deadline: float | None = None  # its last progress (or start) + step_timeout
    rate_limit: str | None = None   # the task's own: at most COUNT dispatches per PERIOD of its bucket
    rate_key: str | None = None     # with rate_limit: the limit applies per key (ratelimits.py)
    progress: dict[str, Any] | None = None  # the latest progress event: fraction, message, attempt, ts

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def note(self, **entry: Any) -> None:
        """Append to the attempt history (bounded)."""
        self.history.append({k: v for k, v in entry.items() if v is not None})
        if len(self.history) > MAX_HISTORY:
            del self.history[: len(self.history) - MAX_HISTORY]

    def to_dict(self) -> dict[str, Any]:
        """The fields, shallow: nested values are the record's own (serialise, do not mutate)."""
        return {name: getattr(self, name) for name in _FIELDS}

    def to_stored(self) -> dict[str, Any]:
        """``to_dict`` less the fields that are None by default and None now: ``from_dict`` restores
        them as they were, and a store's rows stay small as fields are added (a store on a small
        disk has its WAL to fit beside them: tests/test_coordinator_outage.py). Read from ``__dict__``:
        once per record and commit, and half the time of ``getattr``."""
        values = self.__dict__
        return {name: value for name in _FIELDS
                if (value := values[name]) is not None or name not in _NONE_BY_DEFAULT}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskRecord:
        return cls(**{k: v for k, v in data.items() if k in _FIELD_SET})


_FIELDS = tuple(f.name for f in dataclasses.fields(TaskRecord))
_FIELD_SET = frozenset(_FIELDS)
_NONE_BY_DEFAULT = frozenset(f.name for f in dataclasses.fields(TaskRecord) if f.default is None)


class Store(abc.ABC):
    """The coordinator's record. Used by one thread (the coordinator loop) at a time."""

    @abc.abstractmethod
    def put(self, record: TaskRecord) -> None:
        """Buffer the record's current state; durable after the next ``commit``."""

    @abc.abstractmethod
    def commit(self) -> int:
        """Make every buffered put durable; return how many records were written.

        All or nothing: a commit that fails raises ``StoreError`` and keeps every buffered put, so
        that a later ``commit`` (once the disk is back) writes them."""

    @abc.abstractmethod
    def get(self, task_id: str) -> TaskRecord | None:
        """The record of one task (live or finished), or None."""

    def prefetch(self, task_ids: Iterable[str]) -> None:  # noqa: B027 - optional hook, no-op by default
        """A hint: ``get`` will soon be called for these ids. A store may read them in one query and
        answer those ``get`` calls from that read until the next ``commit``."""

    @abc.abstractmethod
    def load_live(self) -> list[TaskRecord]:
        """Every record that is not terminal, oldest first (recovery after a restart)."""

    @abc.abstractmethod
    def list_tasks(self, state: str | None = None, limit: int = 100, *, queue: str | None = None,
                   task: str | None = None, before: Key | None = None) -> list[TaskRecord]:
        """Up to ``limit`` records, most recently updated first (ties: greater id first), of the given
        state, queue and task name if given, and after ``before`` (updated, id) if given: one page
        of ``listing``'s keyset order (docs/coordinator.md, "Task list")."""

    @abc.abstractmethod
    def counts(self) -> dict[str, int]:
        """How many records are in each state."""

    # -- schedules (docs/scheduling.md): buffered like records, committed with them -------
    @abc.abstractmethod
    def put_schedule(self, schedule: ScheduleRecord) -> None:
        """Buffer a schedule's current state; durable after the next ``commit``, in the same
        transaction as the records put in the same batch."""

    @abc.abstractmethod
    def delete_schedule(self, name: str) -> None:
        """Buffer the removal of a schedule (a later ``put_schedule`` of the name brings it back)."""

    @abc.abstractmethod
    def load_schedules(self) -> list[ScheduleRecord]:
        """Every schedule, by name."""

    # -- workflows (docs/workflows.md): buffered like records, committed with them -------
    @abc.abstractmethod
    def put_workflow(self, workflow: WorkflowRecord) -> None:
        """Buffer a workflow's current state; durable after the next ``commit``, in the same
        transaction as the task records of the steps it submitted."""

    @abc.abstractmethod
    def get_workflow(self, workflow_id: str) -> WorkflowRecord | None:
        """One workflow (running or finished, buffered puts included), or None."""

    @abc.abstractmethod
    def list_workflows(self, state: str | None = None, limit: int = 100) -> list[WorkflowRecord]:
        """Workflows, most recently updated first, optionally of one state."""

    # -- rate-limit windows (ratelimits.py): buffered like records, committed with them --------
    @abc.abstractmethod
    def put_rate_window(self, bucket: str, window: dict[str, Any] | None) -> None:
        """Buffer a bucket's window (JSON-able: period and dispatch times; None: forget it); durable
        after the next ``commit``, in the same transaction as the dispatches of the same batch."""

    @abc.abstractmethod
    def load_rate_windows(self) -> dict[str, dict[str, Any]]:
        """Every bucket's window, by bucket (recovery after a restart)."""

    # -- code rollouts (coordinator/deploys.py): buffered, committed with the batch ---------------
    @abc.abstractmethod
    def put_rollout(self, rollout_id: str, data: dict[str, Any]) -> None:
        """Buffer a rollout's record (``rollouts.Rollout.to_dict``); durable after the next ``commit``,
        in the same transaction as the batch that decided its wave."""

    @abc.abstractmethod
    def load_rollouts(self) -> list[dict[str, Any]]:
        """Every rollout's record, oldest first (recovery after a restart)."""

    def close(self) -> None:
        """Commit what is buffered and release resources."""
        self.commit()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["BACKLOG", "CANCELLED", "DEAD", "DISPATCHED", "EXPIRED", "LIVE_STATES", "MAX_HISTORY", "QUEUED",
           "RETRYING", "SCHEDULED", "STARTED", "SUCCEEDED", "TERMINAL", "ScheduleRecord", "Store", "TaskRecord",
           "WorkflowRecord"]

