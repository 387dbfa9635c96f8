"""The timer thread, ``mqtt-worker-timer``: sleeps until something falls due that no message will
prompt (a waiting task's expiry or hand-over, a ``started`` announcement, a ticker such as progress
or cancel grace), then has the dispatcher decide it under its lock.

It shares the dispatcher's lock (a ``threading.Condition``): the dispatcher says when to wake
(``wake_locked`` under the lock, ``wake`` from any thread), and the thread waits on that same
condition, so waking it costs a ``notify`` and nothing runs outside the lock but the sleep.
``started`` announcements are batched: the thread wakes for them at most every ``ANNOUNCE_EVERY``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

ANNOUNCE_EVERY = 0.02
"""The timer thread publishes due ``started`` events at most this often (seconds), in batches:
under load a task starts every fraction of a millisecond, and a wake-up per task would cost
more than the events themselves."""


class Timer:
    """When the timer thread must wake, and the thread's loop."""

    def __init__(self, lock: threading.Condition, *, until_next: Callable[[], float | None],
                 next_announcement: Callable[[], float | None], stopping: Callable[[], bool],
                 on_due: Callable[[], None]) -> None:
        self._lock = lock
        self._until_next = until_next          # under the lock: seconds until something is due
        self._next_announcement = next_announcement
        self._stopping = stopping              # under the lock
        self._on_due = on_due                  # outside the lock: it takes the lock itself
        self._due = float("inf")               # time.monotonic() the thread sleeps until

    def run(self) -> None:
        """Sleep until something is due, have it decided, repeat until stopped."""
        last_run = 0.0
        while True:
            with self._lock:
                if self._stopping():
                    return
                wait = self._until_next()
                if self._next_announcement() is not None:  # batched: see ANNOUNCE_EVERY
                    wait = max(wait if wait is not None else 0.0, last_run + ANNOUNCE_EVERY - time.monotonic())
                self._due = time.monotonic() + wait if wait is not None else float("inf")
                self._lock.wait(wait)
                self._due = float("inf")
                if self._stopping():
                    return
            self._on_due()
            last_run = time.monotonic()

    def wake(self, due: float) -> None:
        """From any thread: make the timer thread wake by ``due`` (time.monotonic())."""
        with self._lock:
            self.wake_locked(due)

    def wake_locked(self, due: float) -> None:
        """Under the lock: make the timer thread wake by ``due`` if it sleeps longer."""
        if due < self._due:
            self._due = due
            self._lock.notify()
