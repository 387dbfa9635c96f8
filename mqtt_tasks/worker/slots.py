"""Slots: how many tasks may start now, the line of tasks waiting for a slot, and when a waiting
task is better handed to the coordinator. Pure state: every method takes the clock reading it
needs (``now`` from ``time.monotonic()``, ``wall`` from ``time.time()``) and does no I/O, so the
policy is tested with a fake clock (tests/test_worker_slots.py).

Facts it is built on:

- Mosquitto hands shared-subscription messages out strictly round-robin, with no regard to how
  busy a member is (docs/broker-facts.md): a busy worker keeps receiving tasks it cannot start.
- A waiting task stays unacknowledged, so the broker's in-flight window (MQTT 5 Receive Maximum,
  else Mosquitto's ``max_inflight_messages``) bounds the QoS 1 line; nothing bounds QoS 0, hence
  ``MAX_QUEUED_QOS0``.
- Short tasks free slots every few milliseconds: a task that waits its turn here costs less than
  a round trip through the coordinator. A waiting task is handed on (``deferred``) only when it is
  not expected to start within ``defer_after`` seconds of its arrival: its wait so far plus its
  place in line times the recent gap between freed slots, or at once when no slot has freed for
  ``defer_after`` (long tasks ahead, or a line that stopped moving).
- A task the coordinator marks ``alone`` (a suspect: it was lost with a worker before) runs with
  nothing else running in this process, so that a crash while it runs convicts it and no
  neighbour: it waits (``alone_next``) until the running tasks are done, and from its arrival to
  its end the worker offers no free slot (``offered``) and starts nothing else.
- Most tasks have no expiry: the line counts the ones that have, so a freed slot costs no scan of
  the line (Mosquitto can make the line long).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from ..protocol.validate import TaskData
from ..transport import Message

MAX_QUEUED_QOS0 = 1000
"""QoS 0 tasks waiting for a free slot; more are dropped (counted in ``stats["dropped"]``).
QoS 1 tasks are never dropped here: the broker's in-flight window bounds them (MQTT 5 Receive
Maximum, else Mosquitto's ``max_inflight_messages``), because they are acknowledged only once they
start or are handed on."""


@dataclass(slots=True)
class Waiting:
    """A task received while every slot was busy; unacknowledged until it starts or is handed on."""

    message: Message
    task: TaskData
    since: float  # time.monotonic() when it arrived


class Slots:
    """Free slots and the line of waiting tasks. Not thread-safe: the dispatcher's lock guards it."""

    def __init__(self, concurrency: int, defer_after: float, now: float) -> None:
        self.concurrency = concurrency
        self.defer_after = defer_after
        self.free = concurrency
        self.line: deque[Waiting] = deque()
        self.qos0 = 0  # of the tasks in line: QoS 0 ones (bounded), ones with an expiry
        self.expiring = 0
        self.last_release = now
        self.release_gap = 0.0  # moving average of the time between freed slots
        self.full_at: float | None = None  # when the worker last had no free slot
        self.alone_next: Waiting | None = None  # an `alone` task waiting for the running ones to end
        self.alone_running = False  # an `alone` task runs: nothing else may start

    @property
    def isolated(self) -> bool:
        """An ``alone`` task runs or waits its turn: no other task may start."""
        return self.alone_running or self.alone_next is not None

    def offered(self) -> int:
        """The free slots to offer the coordinator (none while isolated)."""
        return 0 if self.isolated else max(self.free, 0)

    def idle(self) -> bool:
        return self.free >= self.concurrency

    # -- slots ---------------------------------------------------------------------------
    def take(self, now: float) -> None:
        """A task starts."""
        if self.free == self.concurrency:
            self.last_release = now  # the line's pace is timed from when work began
        self.free -= 1
        if self.free == 0:
            self.full_at = now

    def give_back(self, now: float) -> None:
        """A task's run is over."""
        self.free += 1
        self.release_gap = 0.8 * self.release_gap + 0.2 * (now - self.last_release)
        self.last_release = now

    def full_ago(self, now: float) -> float | None:
        """Seconds since the worker last had no free slot: 0 while full (or isolated: an ``alone``
        task waiting its turn here is held up, not lost), None if it never was."""
        if self.free <= 0 or self.isolated:
            return 0.0
        return round(now - self.full_at, 3) if self.full_at else None

    # -- the line ------------------------------------------------------------------------
    def qos0_full(self) -> bool:
        return self.qos0 >= MAX_QUEUED_QOS0

    def join(self, waiting: Waiting) -> None:
        self.line.append(waiting)
        self.qos0 += waiting.message.qos == 0
        self.expiring += waiting.task.expires_at is not None
        self.full_at = waiting.since

    def next(self) -> Waiting:
        waiting = self.line.popleft()
        self.qos0 -= waiting.message.qos == 0
        self.expiring -= waiting.task.expires_at is not None
        return waiting

    def take_all(self) -> list[Waiting]:
        line, self.line = list(self.line), deque()
        self.qos0 = self.expiring = 0
        return line

    def take_id(self, task_id: str, up_to: int | None = None) -> list[Waiting]:
        """Remove and return the waiting tasks of this id (a cancel), of attempts up to ``up_to`` when
        given; one scan of the line."""
        found = [w for w in self.line if w.task.id == task_id and (up_to is None or w.task.attempt <= up_to)]
        if found:
            self._keep(w for w in self.line if not any(w is f for f in found))
        return found

    def take_expired(self, wall: float) -> list[Waiting]:
        """Remove and return the waiting tasks whose expiry (``expires_at``, wall clock) has passed."""
        if not self.expiring:  # the usual case: no scan of the line
            return []
        expired = [w for w in self.line if w.task.expires_at is not None and w.task.expires_at <= wall]
        if expired:
            self._keep(w for w in self.line if w.task.expires_at is None or w.task.expires_at > wall)
        return expired

    def take_overdue(self, now: float) -> list[Waiting]:
        """Remove and return every waiting task not expected to start within ``defer_after`` of
        its arrival; the rest keep their order."""
        keep: deque[Waiting] = deque()
        overdue: list[Waiting] = []
        for waiting in self.line:
            if self.expected_wait(len(keep), now - waiting.since, now) > self.defer_after:
                overdue.append(waiting)
            else:
                keep.append(waiting)
        if overdue:
            self._keep(keep)
        return overdue

    def _keep(self, waiting: Iterable[Waiting]) -> None:
        self.line = deque(waiting)
        self.qos0 = sum(w.message.qos == 0 for w in self.line)
        self.expiring = sum(w.task.expires_at is not None for w in self.line)

    # -- the estimate --------------------------------------------------------------------
    def expected_wait(self, position: int, waited: float, now: float) -> float:
        """Seconds a task at ``position`` in the line (0 = next), that has waited ``waited``
        already, is expected to spend here in all before a slot frees for it: the recent pace of
        freed slots, or without end when no slot has freed for ``defer_after`` (a stuck line)."""
        if now - self.last_release > self.defer_after:
            return float("inf")
        return waited + (position + 1) * self.release_gap

    def defer_on_arrival(self, now: float) -> bool:
        """Would a task arriving now, joining the end of the line, wait longer than ``defer_after``?"""
        return self.expected_wait(len(self.line), 0.0, now) > self.defer_after

    def next_check(self, wall: float, coordinator_online: bool) -> float | None:
        """Seconds until the line needs looking at with no message to prompt it: a waiting task
        expires, or (with a coordinator to hand tasks to) the next check for overdue ones."""
        waits = [w.task.expires_at - wall for w in self.line
                 if w.task.expires_at is not None] if self.expiring else []
        if self.line and coordinator_online:
            waits.append(self.defer_after / 4)  # re-check the line: see take_overdue
        return min(waits) if waits else None
