"""The rate-limit policy: a sliding-window log per key, pure (no sockets, threads or clocks).

A task with ``rate_limit`` ``COUNT/PERIOD`` (grammar: ``protocol/rates.py``) may be dispatched
when fewer than ``COUNT`` dispatches of its *bucket* happened in the last ``PERIOD`` seconds. The
bucket is the task's name and its ``rate_key`` (none: one bucket per name), so a per-device limit
is one window per device. Every dispatch counts: a retry or a re-dispatch after a loss is a new
run of the task, and takes its place in the window like the first.

Why a log and not a token bucket: a bucket of ``COUNT`` tokens refilled at ``COUNT/PERIOD``
lets up to ``2 x COUNT`` through in one window (a full bucket, then its refill). The log keeps
the times of the last ``COUNT`` dispatches, and admits one more at ``now`` only if the oldest of
them is at least ``PERIOD`` old: so *any* window of ``PERIOD`` seconds, wherever it starts, holds
at most ``COUNT`` dispatches. It costs ``COUNT`` floats per busy bucket (``COUNT`` <= 10,000).

A clock that steps back leaves dispatch times "in the future": they count as recent, so the limit
errs on the slow side, never the fast one. ``export`` and ``restore`` carry a window through the
coordinator's store, so a restarted coordinator continues the window it had (no burst).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .protocol.rates import RateLimit, parse_rate_limit

SEPARATOR = "|"
"""Between the task name (which cannot contain it) and the rate key in a bucket's name."""


def bucket_of(task: str | None, rate_key: str | None) -> str:
    """The window a task counts in: its name, and its ``rate_key`` when it has one."""
    return f"{task or ''}{SEPARATOR}{rate_key or ''}"


@dataclass
class Window:
    """The times of a bucket's recent dispatches, oldest first, and the period they matter for."""

    period: float
    times: deque[float] = field(default_factory=deque)

    def recent(self, now: float) -> int:
        """How many dispatches fall in the window ending at ``now``."""
        self.trim(now)
        return len(self.times)

    def trim(self, now: float, keep: int | None = None) -> None:
        """Drop the times that no window ending at ``now`` or later can contain (and beyond ``keep``)."""
        times = self.times
        while times and times[0] <= now - self.period:
            times.popleft()
        while keep is not None and len(times) > keep:
            times.popleft()


class RateLimiter:
    """The windows of every bucket; decides when the next dispatch of a bucket may happen."""

    def __init__(self) -> None:
        self._windows: dict[str, Window] = {}

    def __len__(self) -> int:
        return len(self._windows)

    def next_slot(self, bucket: str, limit: RateLimit, now: float) -> float:
        """The earliest time, ``now`` or later, at which one more dispatch stays within ``limit``."""
        window = self._windows.get(bucket)
        if window is None:
            return now
        window.period = max(window.period, limit.period)
        window.trim(now)
        if len(window.times) < limit.count:
            return now
        return max(now, window.times[-limit.count] + limit.period)

    def free(self, bucket: str, limit: RateLimit, now: float) -> int:
        """How many dispatches may happen at ``now``."""
        window = self._windows.get(bucket)
        return limit.count if window is None else max(0, limit.count - window.recent(now))

    def take(self, bucket: str, limit: RateLimit, now: float) -> None:
        """Record a dispatch at ``now`` (the caller asked ``next_slot`` first)."""
        window = self._windows.get(bucket)
        if window is None:
            window = self._windows[bucket] = Window(limit.period)
        window.period = limit.period
        window.times.append(now)
        window.trim(now, keep=limit.count)

    def expired(self, now: float) -> list[str]:
        """Forget the buckets with no dispatch in their last period; their names (to forget in the store)."""
        gone = [b for b, w in self._windows.items() if w.recent(now) == 0]
        for bucket in gone:
            del self._windows[bucket]
        return gone

    def export(self, bucket: str) -> dict[str, Any] | None:
        """A bucket's window as JSON-able data (None: it has none)."""
        window = self._windows.get(bucket)
        return None if window is None else {"period": window.period, "times": list(window.times)}

    def restore(self, windows: Mapping[str, Mapping[str, Any]], now: float) -> None:
        """Windows read back from the store; what has aged out since is dropped."""
        for bucket, data in windows.items():
            window = Window(float(data["period"]), deque(sorted(float(t) for t in data["times"])))
            if window.recent(now):
                self._windows[bucket] = window


def limit_of(text: str | None) -> RateLimit | None:
    """The parsed limit of a record's ``rate_limit`` (None: none, or one no longer valid)."""
    if text is None:
        return None
    try:
        return parse_rate_limit(text)
    except ValueError:
        return None


def within(times: Iterable[float], limit: RateLimit, slack: float = 1e-9) -> bool:
    """True when no window of ``limit.period`` seconds (less ``slack``: float rounding, or a delivery
    jitter) holds more than ``limit.count`` of ``times``: what the policy promises; tests check
    their ledgers with it."""
    ordered = sorted(times)
    return all(ordered[i + limit.count] - ordered[i] >= limit.period - slack
               for i in range(len(ordered) - limit.count))
