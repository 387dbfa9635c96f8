"""Rate limits in the coordinator: the backlog's gate, and the windows kept in the store.

The decision is ``mqtt_tasks.ratelimits`` (pure: a sliding-window log per bucket); this part
only applies it to the backlog and keeps its state durable. Built on these facts:

- Workers hand a task with a ``rate_limit`` to the coordinator instead of running it
  (worker/intake.py, as a ``not_before`` ahead), and the coordinator puts it in the backlog as soon
  as it sees it (``leases.on_task``); so every run of such a task, first attempt or retry, is a
  dispatch from the backlog, and this gate sees each one.
- A backlog entry whose bucket's window is full is *parked* here, out of its queue's heap, until
  the window has room: a flood of limited tasks costs a dispatch pass nothing while it waits, and
  the tasks of other buckets and queues go by it. When the window has room for N more, the N
  highest-priority (then oldest) parked entries go back to their queue's heap; a dispatch pass
  places them on workers with free slots, and each placement takes its place in the window.
- A dispatch is published only after the commit of its batch, and the window of the batch's
  dispatches is put in the store in that same batch (``Store.put_rate_window``): a coordinator
  killed at any point restarts with every dispatch it published in its window (and maybe one it
  never published, which only errs on the slow side). Windows are read back at start.
- Buckets with no dispatch in their last period are forgotten (memory and store) every
  ``SWEEP_EVERY`` seconds, so a limit per device costs nothing for devices gone quiet.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any

from ..ratelimits import RateLimiter, bucket_of, limit_of

if TYPE_CHECKING:
    from ..protocol.rates import RateLimit
    from ..store.base import Store, TaskRecord

SWEEP_EVERY = 60.0
Entry = tuple[int, int, str]
"""A backlog entry: (-priority, arrival, task id)."""


class RateGate:
    """Parks the backlog entries whose bucket is at its limit, and releases them as it frees."""

    def __init__(self, store: Store | None) -> None:
        """``store``: where the windows are kept (None: in memory only)."""
        self._store = store
        self.limiter = RateLimiter()
        self._parked: dict[str, list[tuple[int, int, str, str]]] = {}  # bucket -> heap of (*entry, queue)
        self._limits: dict[str, RateLimit] = {}  # bucket -> the limit of its latest parked task
        self._wake: list[tuple[float, str]] = []  # (when a bucket may have room again, bucket)
        self._touched: set[str] = set()  # buckets released from in this pass
        self._waiting: dict[str, dict[str, Any]] = {}  # task id -> what it waits for (status queries)
        self._next_sweep = 0.0

    def recover(self, now: float) -> int:
        """Read the windows back from the store; how many buckets have one."""
        if self._store is not None:
            self.limiter.restore(self._store.load_rate_windows(), now)
        return len(self.limiter)

    def hold(self, record: TaskRecord, queue: str, entry: Entry, now: float) -> bool:
        """Park ``entry`` (True) if the record's bucket may not dispatch one more at ``now``."""
        limit = limit_of(record.rate_limit)
        if limit is None:
            return False
        bucket = bucket_of(record.task, record.rate_key)
        at = self.limiter.next_slot(bucket, limit, now)
        if at <= now:
            return False
        heapq.heappush(self._parked.setdefault(bucket, []), (*entry, queue))
        heapq.heappush(self._wake, (at, bucket))
        self._limits[bucket] = limit
        self._waiting[record.id] = {"limit": limit.text, "key": record.rate_key, "next_at": at}
        return True

    def took(self, record: TaskRecord, now: float) -> None:
        """The record was dispatched at ``now``: it takes its place in its bucket's window."""
        limit = limit_of(record.rate_limit)
        if limit is None:
            return
        bucket = bucket_of(record.task, record.rate_key)
        self.limiter.take(bucket, limit, now)
        if self._store is not None:
            self._store.put_rate_window(bucket, self.limiter.export(bucket))

    def release(self, now: float) -> list[tuple[str, Entry]]:
        """The parked entries whose bucket has room at ``now``, as (queue, entry), as much as it has."""
        released: list[tuple[str, Entry]] = []
        while self._wake and self._wake[0][0] <= now:
            _, bucket = heapq.heappop(self._wake)
            parked = self._parked.get(bucket)
            if not parked or bucket in self._touched:
                continue
            self._touched.add(bucket)
            for _ in range(min(self.limiter.free(bucket, self._limits[bucket], now), len(parked))):
                rank, arrival, task_id, queue = heapq.heappop(parked)
                self._waiting.pop(task_id, None)
                released.append((queue, (rank, arrival, task_id)))
        self._sweep(now)
        return released

    def settle(self, now: float) -> None:
        """After a dispatch pass: when each bucket released from may have room again."""
        for bucket in self._touched:
            parked = self._parked.get(bucket)
            if parked:
                at = self.limiter.next_slot(bucket, self._limits[bucket], now)
                heapq.heappush(self._wake, (at, bucket))  # == now: released ones found no worker yet
            else:
                self._parked.pop(bucket, None)
                self._limits.pop(bucket, None)
        self._touched.clear()

    def waiting(self, task_id: str) -> dict[str, Any] | None:
        """What a parked task waits for: its ``limit``, ``key`` and the ``next_at`` its bucket has room."""
        return self._waiting.get(task_id)

    def forget(self, task_id: str) -> None:
        """The task left the backlog otherwise (cancelled, purged, expired)."""
        self._waiting.pop(task_id, None)

    @property
    def parked(self) -> int:
        return sum(len(p) for p in self._parked.values())

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_EVERY
        for bucket in self.limiter.expired(now):
            if self._store is not None:
                self._store.put_rate_window(bucket, None)
