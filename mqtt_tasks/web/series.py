"""Throughput and latency over time: per-second buckets of finished tasks, pure (no clock, no I/O).

The dashboard's plots read ``Series.points``: one point per second of the window, with the tasks
that ended in it (succeeded and failed apart) and their end-to-end latency (mean and max). Old
buckets are dropped as new ones come, so memory stays bounded by the window.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

DEFAULT_WINDOW_S = 300


@dataclass
class Bucket:
    succeeded: int = 0
    failed: int = 0
    latency_sum: float = 0.0
    latency_n: int = 0
    latency_max: float = 0.0

    def point(self, second: int) -> dict[str, Any]:
        mean = self.latency_sum / self.latency_n if self.latency_n else None
        return {"t": second, "succeeded": self.succeeded, "failed": self.failed,
                "latency_mean": mean, "latency_max": self.latency_max if self.latency_n else None}


class Series:
    """Tasks ended per second, and their latency, over the last ``window`` seconds."""

    def __init__(self, window: int = DEFAULT_WINDOW_S) -> None:
        self.window = window
        self._buckets: OrderedDict[int, Bucket] = OrderedDict()

    def add(self, ts: float, ok: bool, latency: float | None) -> None:
        second = int(ts)
        bucket = self._buckets.get(second)
        if bucket is None:
            late = bool(self._buckets) and next(reversed(self._buckets)) > second
            bucket = self._buckets[second] = Bucket()
            if late:  # a clock step back: keep the buckets in order
                self._buckets = OrderedDict(sorted(self._buckets.items()))
            self._trim(max(self._buckets))
        if ok:
            bucket.succeeded += 1
        else:
            bucket.failed += 1
        if latency is not None and latency >= 0:
            bucket.latency_sum += latency
            bucket.latency_n += 1
            bucket.latency_max = max(bucket.latency_max, latency)

    def _trim(self, newest: int) -> None:
        while self._buckets and next(iter(self._buckets)) <= newest - self.window:
            self._buckets.popitem(last=False)

    def points(self, now: float, window: int | None = None) -> list[dict[str, Any]]:
        """One point per second from ``now - window`` to ``now``, empty seconds included."""
        last = int(now)
        span = min(window or self.window, self.window)
        return [(self._buckets.get(s) or Bucket()).point(s) for s in range(last - span + 1, last + 1)]
