"""Running: the attempts this worker holds, their ``started`` announcements, and the snapshot of
what the worker holds.

Facts it is built on:

- The heartbeat lists every attempt held (with its attempt number), which renews all their
  leases in one message (docs/design.md, "Leases ride on heartbeats"). ``started`` is therefore only
  news: it is published for tasks still running ``started_after`` seconds after they began (under
  load a task starts every fraction of a millisecond, and an event per task would cost more than
  the task), never after the task's final event.
- Publish first, forget second: an attempt stays held until its final event is queued for
  sending, because ``stop()`` closes the connection once nothing is held, and a task forgotten
  before its result was queued would lose that result.
- Fencing: an attempt is known by id *and* attempt number; an event about another attempt of the
  same id (a re-dispatch that reached this worker) leaves this one alone.
- Handed back, never reported: once a stopping worker's grace is over, the attempts still running
  are ``abandon``-ed (and handed back by the worker); the choice between "its result is being
  published" and "it is handed back" is made once, under the lock, so a body that returns after
  the hand-back can never have its result published (``begin_finish`` says no).

Locks: ``Running`` has its own (a condition, which ``wait_idle`` waits on), taken after the
dispatch lock and never before it. The announcement heap is the dispatcher's: it is touched
under the dispatch lock only.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..context import TaskContext
from ..execution import Run
from ..protocol.validate import TaskData
from ..transport import Message


@dataclass(slots=True)
class Held:
    """A task this worker has started and not yet reported."""

    task: TaskData
    message: Message
    started: float  # time.time()
    run: Run | None = None
    announced: bool = False  # its `started` event is published
    finishing: bool = False  # its final event is being published: too late for `started`
    context: TaskContext | None = None  # what current_task() returns in its body
    progress_at: float = float("-inf")  # time.monotonic() of its last progress event (progress.py)


@dataclass(frozen=True, slots=True)
class HeldAttempt:
    id: str
    attempt: int
    started: float  # time.time()


@dataclass(frozen=True)
class WorkerSnapshot:
    """What a worker holds at one moment (``Worker.snapshot()``); a plain value, safe to keep."""

    worker_id: str
    state: str  # online, draining or offline
    coordinator_online: bool
    concurrency: int
    free: int
    waiting: int  # tasks in line for a slot, unacknowledged
    held: tuple[HeldAttempt, ...]  # started and not yet reported
    stats: dict[str, int] = field(default_factory=dict)


class Running:
    """The attempts held, by task id."""

    def __init__(self, started_after: float) -> None:
        self.started_after = started_after
        self._held: dict[str, Held] = {}
        self._lock = threading.Condition()
        self._to_announce: list[tuple[float, str, int]] = []  # heap of (due, task id, attempt)
        self._abandoned: set[tuple[str, int]] = set()  # (task id, attempt) handed back while running
        self._cut_short = False  # wait_idle returns at once: the grace was cut short

    # -- starting (under the dispatch lock) ------------------------------------------------
    def add(self, task: TaskData, message: Message) -> Held:
        held = Held(task, message, time.time())
        with self._lock:
            self._held[task.id] = held
        return held

    def schedule_started(self, task: TaskData, now: float) -> float | None:
        """Announce ``task`` if still running ``started_after`` from ``now``; returns when that is
        due if it is the earliest announcement pending (the timer must wake for it), else None."""
        due = now + self.started_after
        heapq.heappush(self._to_announce, (due, task.id, task.attempt))
        return due if len(self._to_announce) == 1 else None

    def next_announcement(self) -> float | None:
        """``time.monotonic()`` the earliest pending announcement is due, if any."""
        return self._to_announce[0][0] if self._to_announce else None

    def announce_due(self, now: float, announce: Callable[[Held], None]) -> None:
        """Call ``announce`` for each attempt whose announcement is due and that is still running,
        not finishing and not announced yet."""
        while self._to_announce and self._to_announce[0][0] <= now:
            _, task_id, attempt = heapq.heappop(self._to_announce)
            with self._lock:  # under the lock: never after the final event (see begin_finish)
                held = self._held.get(task_id)
                if held is None or held.finishing or held.announced or held.task.attempt != attempt:
                    continue
                held.announced = True
                announce(held)

    # -- finishing (any thread) ----------------------------------------------------------
    def begin_finish(self, task: TaskData) -> bool:
        """The attempt's final event is about to be published: a `started` due now must not follow.
        False if the attempt was handed back (``abandon``): its final event must not be published."""
        with self._lock:
            if self._abandoned and (task.id, task.attempt) in self._abandoned:
                return False
            held = self._held.get(task.id)
            if held is not None and held.task.attempt == task.attempt:
                held.finishing = True
            return True

    def abandon(self) -> list[Held]:
        """The grace is over: every attempt held and not already publishing its final event stops
        being held here, for good; returns them (the worker hands them back). Those publishing
        their final event finish as they are."""
        with self._lock:
            gone = [held for held in self._held.values() if not held.finishing]
            for held in gone:
                del self._held[held.task.id]
                self._abandoned.add((held.task.id, held.task.attempt))
            self._lock.notify_all()
            return gone

    def cut_short(self) -> None:
        """End a ``wait_idle`` now, and any later one at once (a second Ctrl-C)."""
        with self._lock:
            self._cut_short = True
            self._lock.notify_all()

    def forget(self, task: TaskData) -> None:
        """The attempt's final event is queued for sending: it is no longer held."""
        with self._lock:
            held = self._held.get(task.id)
            if held is not None and held.task.attempt == task.attempt:
                del self._held[task.id]
                self._lock.notify_all()

    def while_running(self, task_id: str, attempt: int, fn: Callable[[Held], None]) -> bool:
        """Call ``fn`` under the lock if the attempt is held and its final event not begun (so an
        event ``fn`` publishes goes out before the final one); whether it was called."""
        with self._lock:
            held = self._held.get(task_id)
            if held is None or held.finishing or held.task.attempt != attempt:
                return False
            fn(held)
            return True

    # -- reading -------------------------------------------------------------------------
    def attempt_of(self, task_id: str) -> int | None:
        """The attempt of ``task_id`` held here, if any (one dict read, no lock: the GIL's)."""
        held = self._held.get(task_id)
        return held.task.attempt if held is not None else None

    def ran_for(self, task: TaskData) -> float | None:
        """Seconds since this attempt started here (one dict read, no lock), for the log line."""
        held = self._held.get(task.id)
        if held is None or held.task.attempt != task.attempt:
            return None
        return max(0.0, time.time() - held.started)

    def get(self, task_id: str) -> Held | None:
        with self._lock:
            return self._held.get(task_id)

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._held)

    def attempts(self) -> tuple[HeldAttempt, ...]:
        with self._lock:
            return tuple(HeldAttempt(h.task.id, h.task.attempt, h.started) for h in self._held.values())

    def wait_idle(self, timeout: float, *, interruptible: bool = True) -> list[str]:
        """Wait up to ``timeout`` seconds until nothing is held, or (``interruptible``) until
        ``cut_short``; returns the ids still held."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._held and not (interruptible and self._cut_short) and \
                    (left := deadline - time.monotonic()) > 0:
                self._lock.wait(left)
            return list(self._held)
