"""Timers: when each live record must be looked at again, and what happens when it is.

Built on these facts:

- ``leases.next_due`` is the earliest time ``leases.on_timer`` can change a record, so a record
  needs one heap entry at that time, no polling. An entry can only be *early* (the record's timer
  moved later since: a heartbeat renewed its lease) or *stale* (the record finished); either is
  rescheduled or skipped when popped. A tick costs O(due x log live), never a pass over every live
  record, and a renewed lease costs one dict lookup.
- A task nobody accounts for is more likely waiting than lost while a live worker of its queue has
  been full within the dispatch timeout (``Fleet.held_up``): its deadline moves on instead.
- A queued task whose queue lost a worker since it was seen may have killed that worker before it
  could announce ``started`` (``Fleet.died_since``): it becomes a suspect (``leases.runs_alone``), so
  a poison task is still found out and ends ``dead`` (leases.py, poison isolation).
- Such a task is not left to its dispatch timeout: the worker's ``offline`` has it looked at
  within a heartbeat (``check_soon``), and it is dispatched again as soon as every live worker of
  its queue has shown, by a heartbeat with a free slot and an empty line, that it does not hold it
  (``leases.lost_unseen``); until then it is looked at every heartbeat, and at its dispatch
  timeout the rules above apply as before.
- Likewise a task dispatched to a worker's inbox (by this coordinator, or by a leader that died
  before it could publish the dispatch it had committed: recovery looks at each within a
  heartbeat) is sent again as soon as that worker's heartbeats show room and do not list it
  (``leases.dispatch_unseen``).
"""

from __future__ import annotations

import heapq
import logging
from typing import TYPE_CHECKING

from .. import leases
from ..protocol.states import DISPATCHED, QUEUED, RETRYING

if TYPE_CHECKING:
    from ..leases import Effect, LeasePolicy
    from ..store.base import TaskRecord
    from .fleet import Fleet
    from .records import Records

log = logging.getLogger(__name__)

_NEVER = float("inf")


class Timers:
    """A heap of (due time, task id) over the live records, and the firing of what is due."""

    def __init__(self, policy: LeasePolicy, fleet: Fleet, stats: dict[str, int]) -> None:
        self._policy = policy
        self._fleet = fleet
        self._stats = stats
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}  # id -> its earliest entry in the heap

    def __len__(self) -> int:
        return len(self._due)

    def schedule(self, record: TaskRecord) -> None:
        """Make sure the heap holds an entry for the record's next due time (or an earlier one)."""
        due = leases.next_due(record)
        if due is not None and due < self._due.get(record.id, _NEVER):
            self._due[record.id] = due
            heapq.heappush(self._heap, (due, record.id))

    def check_soon(self, record: TaskRecord, now: float) -> None:
        """Look at a record nobody may hold within a heartbeat (``_unseen``), before its own timer."""
        at = now + self._fleet.recheck_s(record.queue)
        if record.deadline is not None and at < record.deadline and at < self._due.get(record.id, _NEVER):
            self._due[record.id] = at
            heapq.heappush(self._heap, (at, record.id))

    def _unseen(self, record: TaskRecord, now: float) -> list[Effect] | None:
        """The effects if a queued or dispatched record is known lost before its dispatch timeout
        (``leases.dispatch_unseen``, ``leases.lost_unseen``); else None, and another look soon."""
        if record.state == DISPATCHED:
            if leases.dispatch_unseen(record, self._fleet.views.get(record.worker or ""), now, self._policy):
                return leases.on_dispatch_unseen(record, now, self._policy)
        elif record.state == QUEUED and self._fleet.died_since(record):
            if self._fleet.lost_unseen(record, now):
                return leases.on_lost_unseen(record, now, self._policy)
        else:
            return None
        self.check_soon(record, now)
        return None

    def forget(self, task_id: str) -> None:
        """The record finished: its heap entries become stale."""
        self._due.pop(task_id, None)

    def tick(self, now: float, records: Records) -> None:
        """Fire the timers that are due at ``now``."""
        heap, due = self._heap, self._due
        while heap and heap[0][0] <= now:
            when, task_id = heapq.heappop(heap)
            if due.get(task_id) == when:
                del due[task_id]
            record = records.live.get(task_id)
            if record is not None:
                self._fire(record, now, records)

    def _fire(self, record: TaskRecord, now: float, records: Records) -> None:
        state, attempt = record.state, record.attempt
        effects = self._unseen(record, now)
        if effects is None:
            if self._fleet.held_up(record, now):
                record.deadline = now + self._policy.dispatch_timeout
                self.schedule(record)
                return
            died = record.state == QUEUED and self._fleet.died_since(record)
            effects = leases.on_timer(record, now, self._policy, worker_died=died)
        if record.state != state or record.attempt != attempt:
            if attempt != record.attempt and state != RETRYING:
                self._stats["redispatched"] += 1
                log.info("coordinator: task %s attempt %d %s; next attempt %d", record.id, attempt,
                         record.reason or "lost", record.attempt)
            records.save(record, effects)
        elif effects:
            records.save(record, effects)
        else:
            self.schedule(record)
