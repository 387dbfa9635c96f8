"""Records: the live records in memory, over the durable store; recovery after a restart.

Built on these facts (``store.base``):

- A store buffers ``put`` and makes it durable on ``commit``; the loop commits once per batch,
  before acknowledging the batch's messages. So a record is saved here as often as it changes, and
  written once per batch however often that was.
- Every record that is not terminal is *live*: it is kept in memory (``live``) with a timer and,
  in ``backlog``, a place in its queue's backlog. A finished record leaves all three; the store
  still answers for it (queries, a late duplicate result, a redelivered task).
- A live record that becomes final is handed to the ``finished`` hooks (a workflow's step moves
  its workflow on: ``workflows.py``) in the batch that made it final, so their changes share its
  commit.
- After a restart the live records are read back from the store and every lease is extended by
  ``reconnect_grace``: the workers' heartbeats have not been heard yet, which proves nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .. import leases
from ..protocol.states import BACKLOG, DISPATCHED, QUEUED, STARTED
from . import routing

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ..leases import Effect, LeasePolicy
    from ..store.base import Store, TaskRecord
    from .backlog import Backlog
    from .timers import Timers


class Records:
    """The live cache over the store, and the one place a changed record is saved."""

    def __init__(self, store: Store, policy: LeasePolicy, timers: Timers, backlog: Backlog,
                 apply: Callable[[TaskRecord, Effect], None], clock: Callable[[], float],
                 stats: dict[str, int]) -> None:
        self.store = store
        self.live: dict[str, TaskRecord] = {}
        self._held: dict[str, set[str]] = {}  # worker -> ids of the live records last saved with it
        self._holder: dict[str, str] = {}  # id -> that worker
        self._queued: dict[str, set[str]] = {}  # queue -> ids of the live records last saved queued on it
        self._queue_of: dict[str, str] = {}  # id -> that queue
        self._policy = policy
        self._timers = timers
        self._backlog = backlog
        self._apply = apply
        self._clock = clock
        self._stats = stats
        self.finished: list[Callable[[TaskRecord], None]] = []  # a live record became final (workflows)

    def recover(self) -> int:
        """Load the live records from the store, with leases extended; how many there are."""
        now = self._clock()
        for record in self.store.load_live():
            self.live[record.id] = record
            self._index(record)
            leases.extend(record, now, self._policy.reconnect_grace)
            self._timers.schedule(record)
            if record.state == DISPATCHED:  # a dead leader may have committed it and never sent it
                self._timers.check_soon(record, now)
            if record.state == BACKLOG:
                self._backlog.push(record.id, routing.lane_of(record), record.priority)
        return len(self.live)

    def extend_leases(self, now: float) -> None:
        """After a (re)connect: the workers get ``reconnect_grace`` to be heard from again."""
        for record in self.live.values():
            leases.extend(record, now, self._policy.reconnect_grace)

    def get(self, task_id: str) -> TaskRecord | None:
        record = self.live.get(task_id)
        return record if record is not None else self.store.get(task_id)

    def get_or_create(self, task_id: str, **known: Any) -> TaskRecord:
        """The task's record; a new live one if the task was never seen."""
        record = self.get(task_id)
        if record is None:
            record = leases.new_record(task_id, self._clock(), **known)
            self.live[task_id] = record
            self._stats["recorded"] += 1
        return record

    def get_or_new(self, task_id: str, body: Mapping[str, Any] | None, **known: Any) -> TaskRecord:
        """The task's record; a new one built from ``body`` if the task was never seen (live once saved)."""
        record = self.get(task_id)
        if record is None:
            record = leases.new_record(task_id, self._clock(), body=body, **known)
            self._stats["recorded"] += 1
        return record

    def save(self, record: TaskRecord, effects: list[Effect]) -> None:
        """Buffer the changed record in the store, keep the live cache and timers in step, carry out effects."""
        self.store.put(record)
        ended = False
        if record.terminal:
            ended = self.live.pop(record.id, None) is not None
            self._backlog.discard(record.id)
            self._timers.forget(record.id)
        else:
            if record.id not in self.live:
                self.live[record.id] = record
            self._timers.schedule(record)
        self._index(record)
        for effect in effects:
            self._apply(record, effect)
        if ended:
            for hook in self.finished:
                hook(record)

    def check_soon(self, record: TaskRecord) -> None:
        """Look within a heartbeat whether a worker holds the record (``Timers.check_soon``)."""
        self._timers.check_soon(record, self._clock())

    def dispatched(self, record: TaskRecord) -> None:
        """The record was dispatched to a worker's inbox: its timer and store row follow, and a
        look within a heartbeat whether the worker got it."""
        self._timers.schedule(record)
        self._index(record)
        self.check_soon(record)
        self.store.put(record)

    def held_by(self, worker: str) -> list[TaskRecord]:
        """The live records started on or dispatched to ``worker``, oldest first: O(its tasks), not
        O(live) (10,000 workers lost at once, each holding a task, would be 10^8 steps)."""
        held = (self.live.get(i) for i in self._held.get(worker, ()))
        return sorted((r for r in held if r is not None and r.worker == worker and r.state in (STARTED, DISPATCHED)),
                      key=lambda r: r.created)

    def queued_in(self, queues: Iterable[str]) -> list[TaskRecord]:
        """The live queued records of ``queues``: O(those), not O(live) (a worker's Last Will asks,
        and a fleet lost at once sends thousands of them)."""
        found = (self.live.get(i) for q in set(queues) for i in self._queued.get(q, ()))
        return [r for r in found if r is not None and r.state == QUEUED]

    def _index(self, record: TaskRecord) -> None:
        """Keep the indexes in step with a saved record: by worker (``held_by``) and, while it is
        queued, by queue (``queued_in``); a terminal one leaves both."""
        _move(self._held, self._holder, record.id, None if record.terminal else record.worker)
        _move(self._queued, self._queue_of, record.id, record.queue if record.state == QUEUED else None)


def _move(index: dict[str, set[str]], key_of: dict[str, str], ident: str, key: str | None) -> None:
    """File ``ident`` under ``key`` in ``index`` (None: under none), out of where it was."""
    old = key_of.get(ident)
    if old == key:
        return
    if old is not None:
        ids = index[old]
        ids.discard(ident)
        if not ids:
            del index[old]
    if key is None:
        del key_of[ident]
    else:
        index.setdefault(key, set()).add(ident)
        key_of[ident] = key
