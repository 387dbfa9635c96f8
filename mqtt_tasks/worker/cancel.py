"""Cancels: a task cancelled while this worker holds it, waits for it, or has yet to receive it.

Requests arrive two ways, both decided under the dispatch lock: on ``P/cancel/{id}``, which every
worker reads (no coordinator needed: any client may publish ``{}`` there), and from the
coordinator as a ``cancel`` control op marked ``"cancelled": true`` (the coordinator knows which
worker holds the task, and repeats it while a heartbeat still lists the task).

Facts it is built on:

- A task waiting here for a slot is unacknowledged: it is taken out of the line, ends
  ``cancelled`` and is acknowledged.
- A running attempt is interrupted (``Executor.interrupt``): an ``async def`` body is cancelled
  (it sees ``asyncio.CancelledError``), a plain function gets ``TaskCancelled`` raised in its
  thread, as time limits do. Its ``cancelled`` event is published at once, and whatever the body
  does afterwards is never reported.
- Python cannot kill a thread: a body that catches ``TaskCancelled`` and goes on, or sits in C
  code, keeps its thread. Its slot is given back only when the thread is free again, so the worker
  never runs more bodies than it has slots. A body still running ``grace`` seconds after the cancel
  is *abandoned*: logged, counted (``stats["abandoned"]``), and reported as ``stuck`` in every
  heartbeat while it holds its slot, so the coordinator and an operator see why a slot is gone.
- With a coordinator online the coordinator owns the task's fate, and sends the final
  ``cancelled`` event to the reply topic; without one, the worker's event is final and replied.
- A cancel that arrives before its task (the task still queued on the broker) is remembered, for
  ``REMEMBER`` ids: the task ends ``cancelled`` when it arrives instead of running. Without a
  coordinator this is all there is: a task that reaches a worker which did not see the request
  (it was offline then, or started later) runs.
- A cancel covers the attempts that existed when it was made, not the task id for ever: an
  operator's ``retry`` of a cancelled task is a new attempt (the coordinator's ``attempt`` + 1) and
  runs. What a cancel covers: the attempt it names (the coordinator's control op), else the newest
  attempt of the task held or waiting here, else attempt 1 (the one its producer published). That
  holds without a coordinator, where every task has the attempt its producer gave it (1): a
  request by id alone keeps refusing it. Attempts above 1 come only from a coordinator, and only
  through one worker's inbox: when the coordinator cancels such an attempt it tells that worker
  with a control op naming the attempt (``leases.on_cancel``), and a start of a cancelled task
  it hears is stopped (``leases.on_started``).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from ..execution import Executor, Run
from ..protocol.states import CANCELLED
from ..protocol.validate import TaskData
from ..transport import Message
from .link import CoordinatorLink
from .reporter import Reporter
from .running import Held, Running
from .stats import Counters

if TYPE_CHECKING:
    from .slots import Slots

log = logging.getLogger(__name__)

DEFAULT_CANCEL_GRACE = 10.0
"""Seconds a cancelled body has to stop before it is abandoned (counted as stuck)."""
REMEMBER = 10_000
"""Cancelled task ids remembered, so that a task arriving after its cancel does not run."""
FIRST_ATTEMPT = 1
"""The attempt a producer publishes: what a cancel by id covers when nothing of the task is here."""


class Cancels:
    """Carries out cancel requests; tracks cancelled bodies that did not stop."""

    def __init__(self, worker_id: str, running: Running, executor: Executor, reporter: Reporter,
                 link: CoordinatorLink, counters: Counters, grace: float) -> None:
        if grace < 0:
            raise ValueError("cancel_grace must be >= 0")
        self.worker_id = worker_id
        self.grace = grace
        self._running = running
        self._executor = executor
        self._reporter = reporter
        self._link = link
        self._counters = counters
        self.recent: OrderedDict[str, tuple[str, int]] = OrderedDict()  # id -> (reason, newest attempt covered)
        self._watch: list[tuple[float, str, Run]] = []  # (due, task id, run): stopped by then?
        self._stuck: list[Run] = []

    # -- requests (under the dispatch lock) ------------------------------------------------
    def cancel(self, task_id: str, reason: str, slots: Slots, attempt: Any = None) -> list[Message]:
        """Cancel ``task_id`` here (only up to ``attempt`` of it, when given): in line, running, or yet
        to come; returns the messages to ack."""
        reason = reason or "cancelled"
        named = attempt if isinstance(attempt, int) and not isinstance(attempt, bool) and attempt >= 1 else None
        waiting = slots.take_id(task_id, up_to=named)  # a newer attempt than the one named stays in line
        held = self._running.get(task_id)
        here = [w.task.attempt for w in waiting] + ([held.task.attempt] if held is not None else [])
        self._remember(task_id, reason, named if named is not None else max([FIRST_ATTEMPT, *here]))
        acks = []
        for entry in waiting:
            self._counters.add("cancelled")
            self._reporter.finish(entry.task, entry.message, CANCELLED, {"reason": reason},
                                  final=not self._link.online)
            acks.append(entry.message)
        if held is not None and named in (None, held.task.attempt):
            self._interrupt(task_id, held, reason)
        return acks

    def _interrupt(self, task_id: str, held: Held, reason: str) -> None:
        """Stop the running attempt ``held``; its ``cancelled`` event goes out at once."""
        if held.run is None:
            return
        if held.context is not None:
            held.context.cancelled = True
        if self._executor.interrupt(held.run, reason):
            self._counters.add("cancelled")
            log.warning("worker %s: cancelling task %s attempt %d: %s", self.worker_id, task_id,
                        held.task.attempt, reason)
            self._reporter.finish(held.task, held.message, CANCELLED, {"reason": reason},
                                  final=not self._link.online)
            if not held.run.released:
                self._watch.append((time.monotonic() + self.grace, task_id, held.run))

    def refuses(self, task: TaskData, message: Message) -> bool:
        """True (and ``task`` ended ``cancelled``) if a cancel that arrived before it covers its
        attempt; one dict lookup when any task was cancelled. A newer attempt (a retry) runs."""
        known = self.recent.get(task.id) if self.recent else None
        if known is None or task.attempt > known[1]:
            return False
        self._counters.add("cancelled")
        log.info("worker %s: task %s attempt %d arrived after its cancel: not run", self.worker_id, task.id,
                 task.attempt)
        self._reporter.finish(task, message, CANCELLED, {"reason": known[0]}, final=not self._link.online)
        return True

    def _remember(self, task_id: str, reason: str, covers: int) -> None:
        earlier = self.recent.get(task_id)
        self.recent[task_id] = (reason, max(covers, earlier[1]) if earlier is not None else covers)
        self.recent.move_to_end(task_id)
        while len(self.recent) > REMEMBER:
            self.recent.popitem(last=False)

    # -- the grace (the timer thread, under the dispatch lock) --------------------------------
    def next_due(self) -> float | None:
        return min(due for due, _, _ in self._watch) if self._watch else None

    def tick(self, now: float) -> None:
        """Abandon the cancelled bodies still running after the grace."""
        due = [w for w in self._watch if w[0] <= now]
        if not due:
            return
        self._watch = [w for w in self._watch if w[0] > now]
        for _, task_id, run in due:
            if run.released:
                continue
            self._stuck.append(run)
            self._counters.add("abandoned")
            log.warning("worker %s: task %s did not stop within %.1fs of its cancel: abandoned; its slot stays "
                        "taken until its body returns", self.worker_id, task_id, self.grace)

    def stuck(self) -> int:
        """Slots held by abandoned bodies that still run."""
        self._stuck = [run for run in self._stuck if not run.released]
        return len(self._stuck)
