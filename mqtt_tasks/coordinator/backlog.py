"""The backlog: tasks the coordinator holds until a worker has a free slot, and their dispatch.

Built on these facts (docs/design.md, docs/broker-facts.md):

- A worker acknowledges a task at once and hands back (``deferred``) what it cannot start; a
  retry after a backoff and a re-dispatch after a loss land here too (``leases.Enqueue``).
- Mosquitto hands shared-subscription messages out round-robin whatever a member's load, so the
  backlog is not given back to the shared topic: each task goes to the inbox of one worker the
  fleet knows has a free slot (``P/inbox/{worker}``): highest ``priority`` first, then oldest, across
  the queues (docs/scheduling.md). A heap per queue: O(log n) a push or a pop.
- A task that ``requires`` labels waits in its own lane, ``queue/label,label`` (``routing``), for a
  worker that has them all; a lane nobody serves holds up no other lane.
- A dispatch pass costs O(workers with a free slot x lanes) to find them (the fleet keeps the set
  of workers with a free slot), then O(log n) a placement (``fleet.Picker``): a full fleet of
  10,000 costs a batch nothing, and a lane without a free slot is not looked at; the pass stops
  when nothing more can be placed.
- A task with a ``rate_limit`` whose bucket is at its limit is parked by the gate
  (``ratelimits.RateGate``) when it comes up, and comes back when the bucket has room; each
  dispatch of such a task takes its place in the bucket's window.
"""

from __future__ import annotations

import heapq
import itertools
from typing import TYPE_CHECKING

from .. import leases
from ..protocol.states import BACKLOG, DEFAULT_PRIORITY
from . import routing
from .ratelimits import RateGate

if TYPE_CHECKING:
    from ..leases import LeasePolicy
    from ..store.base import TaskRecord
    from .effects import Effects
    from .fleet import Fleet, Picker
    from .records import Records


class Backlog:
    """Per queue, a heap of (-priority, arrival, task id); an entry whose record moved on is skipped."""

    def __init__(self, policy: LeasePolicy, fleet: Fleet, stats: dict[str, int], gate: RateGate | None = None) -> None:
        self._policy = policy
        self._fleet = fleet
        self._stats = stats
        self.gate = gate if gate is not None else RateGate(None)
        self._queues: dict[str, list[tuple[int, int, str]]] = {}
        self._members: set[str] = set()
        self._arrivals = itertools.count()

    def __len__(self) -> int:
        return len(self._members)

    def by_queue(self) -> dict[str, int]:
        """Tasks waiting per queue (the stats query; a heap keeps discarded ids until popped)."""
        members = self._members
        counts = {name: sum(1 for _, _, task_id in heap if task_id in members) for name, heap in self._queues.items()}
        return {name: n for name, n in counts.items() if n}

    def push(self, task_id: str, queue_name: str, priority: int | None = None) -> None:
        if task_id not in self._members:
            self._members.add(task_id)
            rank = -(DEFAULT_PRIORITY if priority is None else priority)
            heapq.heappush(self._queues.setdefault(queue_name, []), (rank, next(self._arrivals), task_id))

    def discard(self, task_id: str) -> None:
        self._members.discard(task_id)
        self.gate.forget(task_id)

    def dispatch(self, now: float, records: Records, effects: Effects) -> None:
        """Hand backlog tasks to workers with free slots, highest priority then oldest first, across the
        queues that have one; parked rate-limited tasks come back as their bucket has room."""
        for name, entry in self.gate.release(now):
            heapq.heappush(self._queues.setdefault(name, []), entry)
        try:
            self._dispatch(now, records, effects)
        finally:
            self.gate.settle(now)

    def _dispatch(self, now: float, records: Records, effects: Effects) -> None:
        if not self._queues:
            return
        serving = self._fleet.serving(self._queues, now)
        while serving:
            name = min(serving, key=lambda q: self._queues[q][0][:2])
            picker = serving[name]
            if not picker:
                del serving[name]
                continue
            entries = self._queues[name]
            entry = heapq.heappop(entries)
            record = self._take(entry[2], name, records)
            if record is not None and self.gate.hold(record, name, entry, now):
                self._members.add(entry[2])  # parked: still in the backlog
            elif record is not None and not self._place(record, picker, len(entries) + 1, now, records, effects):
                heapq.heappush(entries, entry)  # no worker fits it now: it stays first
                self._members.add(entry[2])
                del serving[name]
            if not entries:
                del self._queues[name]
                serving.pop(name, None)

    def _take(self, task_id: str, name: str, records: Records) -> TaskRecord | None:
        """The record of a backlog entry if it is still waiting in that queue's backlog."""
        self._members.discard(task_id)
        record = records.live.get(task_id)
        if record is None or record.state != BACKLOG:
            return None
        if routing.lane_of(record) != name:
            self.push(task_id, routing.lane_of(record), record.priority)
            return None
        return record

    def _place(self, record: TaskRecord, picker: Picker, waiting: int, now: float, records: Records,
               effects: Effects) -> bool:
        view = self._fleet.assign(record, picker, waiting)
        if view is None:
            return False
        leases.on_dispatched(record, view.worker, now, self._policy)
        self.gate.took(record, now)
        records.dispatched(record)
        self._stats["dispatched"] += 1
        effects.dispatch(record, view.worker, alone=leases.runs_alone(record, self._policy))
        return True
