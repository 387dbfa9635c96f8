"""Progress: what task bodies report through ``current_task().progress(...)``, rate-limited on the wire.

Facts it is built on:

- A body may report progress in a tight loop; the wire must not carry that. Per attempt, at most
  one ``progress`` event per ``every`` seconds leaves the worker: the first report at once, later
  ones held back, and the latest held-back report published when its turn comes (the timer thread
  does, see ``Dispatcher.tickers``), so the last word of a body that then goes quiet is not lost.
  A report superseded before its turn is dropped.
- Never after the attempt's final event: an event is published under ``Running``'s lock, only
  while the attempt is held and its final event not begun (``Running.while_running``); a report
  still held back when the attempt ends is dropped.
- Each event renews the attempt's lease at the coordinator and restarts its step timer
  (``step_timeout``, leases.py): a body that reports progress proves it is not hung.
- The per-task cost is nil for a body that never reports: the state lives on ``Held``.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from functools import partial

from ..context import TaskContext
from ..protocol import events
from ..protocol.states import PROGRESS
from .reporter import Reporter
from .running import Held, Running

DEFAULT_PROGRESS_EVERY = 1.0
"""Seconds between two ``progress`` events of one attempt on the wire, at least."""

Report = tuple[float | None, str | None]


class Progress:
    """The progress sink of every ``TaskContext`` of one worker."""

    def __init__(self, reporter: Reporter, running: Running, every: float, wake: Callable[[float], None]) -> None:
        if every < 0:
            raise ValueError("progress_every must be >= 0")
        self.every = every
        self._reporter = reporter
        self._running = running
        self._wake = wake  # make the timer thread wake by a time.monotonic()
        self._lock = threading.Lock()
        self._held_back: dict[tuple[str, int], Report] = {}  # the latest report not yet published
        self._due: list[tuple[float, int, str, int]] = []  # heap of (due, seq, task id, attempt)
        self._seq = itertools.count()

    def __call__(self, context: TaskContext, fraction: float | None, message: str | None) -> None:
        """A body reported progress (its own thread, or the event loop)."""
        held = self._running.get(context.id)
        if held is None or held.task.attempt != context.attempt:
            return
        now = time.monotonic()
        due = held.progress_at + self.every
        if now >= due:
            self._running.while_running(context.id, context.attempt, partial(self._publish, fraction=fraction,
                                                                             message=message))
            return
        key = (context.id, context.attempt)
        with self._lock:
            first = key not in self._held_back
            self._held_back[key] = (fraction, message)
            if first:
                heapq.heappush(self._due, (due, next(self._seq), context.id, context.attempt))
        if first:
            self._wake(due)

    def _publish(self, held: Held, fraction: float | None, message: str | None) -> None:
        held.progress_at = time.monotonic()
        self._reporter.status(held.task, PROGRESS, {"progress": events.progress_info(fraction, message)})

    # -- the timer thread's part (Dispatcher.tickers) ------------------------------------------
    def next_due(self) -> float | None:
        with self._lock:
            return self._due[0][0] if self._due else None

    def tick(self, now: float) -> None:
        """Publish the held-back reports whose turn has come (dropped if their attempt ended)."""
        while True:
            with self._lock:
                if not self._due or self._due[0][0] > now:
                    return
                _, _, task_id, attempt = heapq.heappop(self._due)
                report = self._held_back.pop((task_id, attempt), None)
            if report is not None:
                fraction, message = report
                self._running.while_running(task_id, attempt, partial(self._publish, fraction=fraction,
                                                                      message=message))
