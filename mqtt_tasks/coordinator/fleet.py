"""The fleet: what the coordinator believes about each worker, and its slot accounting.

Built on these facts (docs/design.md "Recommended mechanics", docs/broker-facts.md):

- A worker's retained heartbeat (``P/workers/{id}``) says its queues, concurrency, free slots, the
  tasks it holds, and how long ago it was last full; its Last Will says ``offline``. A *retained*
  heartbeat may be old: it is not proof of life (``last_seen`` stays 0 until a live one arrives).
- Between two heartbeats the coordinator keeps the free-slot count itself: a ``started`` it did not
  dispatch takes a slot, a result gives one back, a ``deferred`` says the worker is full, and a
  dispatch to a worker's inbox takes one. Dispatches not yet confirmed by a ``started`` are *in
  flight*; a heartbeat counts them against the free slots it reports, until the worker lists them.
- A suspect that runs alone (``leases.runs_alone``) is dispatched alone: its worker runs nothing
  else until it ends, so it takes every slot of that worker, and its result gives them all back.
- A task that starts and finishes between two heartbeats is never counted (a worker announces
  ``started`` only after ``started_after``): its result gives back no slot it did not take.
- Mosquitto queues a worker's messages behind the ones it holds, where no heartbeat lists them; so
  a task nobody accounts for, while a worker of its queue was recently full, is held up, not lost.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from .. import leases
from ..leases import WorkerView
from ..protocol.states import DISPATCHED, OFFLINE, ONLINE, QUEUED, STARTED
from . import routing

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ..leases import LeasePolicy
    from ..protocol.messages import WorkerState
    from ..store.base import TaskRecord

RATE_EVERY = 1.0
"""Seconds a queue's fleet rate (the dispatch horizon's) is reused: reading it is O(fleet). It is
read again at once when a worker's first task duration becomes known."""


class Fleet:
    """Worker views by id, and the dispatches in flight to each worker."""

    def __init__(self, policy: LeasePolicy) -> None:
        self._policy = policy
        self.views: dict[str, WorkerView] = {}
        self._inflight: dict[str, set[str]] = {}
        self._free: set[str] = set()  # workers whose view has a free slot
        self._last_loss: dict[str, float] = {}  # queue -> the latest lost_at of a worker serving it
        self._order: dict[str, int] = {}  # worker -> when first seen: pick_worker's tie-break
        self._rates: dict[str, tuple[float, float, float]] = {}  # queue -> (when, tasks/s, shortest duration)

    def view(self, worker: str) -> WorkerView:
        view = self.views.get(worker)
        if view is None:
            view = self.views[worker] = WorkerView(worker)
            self._order[worker] = len(self._order)
        return view

    # -- status events -------------------------------------------------------------------
    def started(self, worker: str, record: TaskRecord) -> WorkerView:
        """``worker`` started the record's task: a dispatch confirmed, or a slot taken."""
        view = self.view(worker)
        if record.state == DISPATCHED and record.worker == worker:
            self._inflight.get(worker, set()).discard(record.id)
        else:
            self.set_free(view, view.free - 1)
        return view

    def finished(self, worker: str | None, record: TaskRecord, now: float) -> None:
        """``worker`` reported a result for the record's task: its slot is free again."""
        if worker is None:
            return
        view = self.view(worker)
        if record.state == STARTED and record.worker == worker and record.started_at:
            if view.duration <= 0:  # the first duration known of this worker: the horizon changes now
                self._rates.clear()
            leases.observe_duration(view, max(now - record.started_at, 0.0))
        if record.worker != worker or record.state not in (STARTED, DISPATCHED):
            return  # never counted against its slots (see the module docstring)
        if leases.runs_alone(record, self._policy):
            self.set_free(view, view.concurrency or 1)  # it ran alone: the worker had nothing else running
            return
        self.set_free(view, min(view.free + 1, view.concurrency or view.free + 1))

    def deferred(self, worker: str, record: TaskRecord, *, full: bool = True) -> None:
        """``worker`` handed the task back: it has no free slot (``full``; not so for a task it handed
        over because its ``not_before`` is ahead)."""
        if full:
            self.set_free(self.view(worker), 0)
        if record.state == DISPATCHED and record.worker == worker:
            self._inflight.get(worker, set()).discard(record.id)

    # -- worker states -------------------------------------------------------------------
    def heard(self, worker: str, state: WorkerState, now: float, retained: bool) -> WorkerView:
        """A heartbeat (or Last Will) of ``worker``; the free slots are set by ``reconcile``."""
        view = self.view(worker)
        view.state = state.state
        if state.state == OFFLINE:
            self.set_free(view, 0)
            return view
        self._serve(view, tuple(state.queues))
        view.labels = frozenset(state.labels or ())
        view.code = state.code or {}
        view.concurrency = state.concurrency
        view.heartbeat_s = state.heartbeat_s
        view.last_seen = 0.0 if retained else now  # a retained state may be old: not proof of life
        full_ago = state.full_ago if (state.waiting or 0) == 0 else 0.0
        view.full_at = now - full_ago if full_ago is not None and full_ago >= 0 else None
        return view

    def reconcile(self, worker: str, state: WorkerState, held: dict[str, int], live: dict[str, TaskRecord]) -> None:
        """The heartbeat's free slots, less the dispatches in flight to it that it does not list yet."""
        pending = {i for i in self._inflight.get(worker, set())
                   if (r := live.get(i)) is not None and r.state == DISPATCHED and r.worker == worker}
        self._inflight[worker] = pending
        free = (state.free or 0) - len(pending - held.keys()) if state.state == ONLINE else 0
        self.set_free(self.views[worker], free)

    def lost(self, worker: str, now: float) -> None:
        """``worker`` went offline: nothing is in flight to it any more."""
        view = self.view(worker)
        view.lost_at = now
        for name in view.queues:
            self._last_loss[name] = max(self._last_loss.get(name, now), now)
        self._inflight.pop(worker, None)

    def _serve(self, view: WorkerView, queues: tuple[str, ...]) -> None:
        """The worker's queues as its heartbeat says; a worker lost before that changes its queues
        moves its loss to them (``died_since``: the latest loss per queue, kept, not searched)."""
        old, view.queues = view.queues, queues
        if old == queues or view.lost_at is None:
            return
        for name in set(old) - set(queues):  # rare: a lost worker back with other queues
            losses = [w.lost_at for w in self.views.values() if w.lost_at is not None and name in w.queues]
            if losses:
                self._last_loss[name] = max(losses)
            else:
                self._last_loss.pop(name, None)
        for name in set(queues) - set(old):
            self._last_loss[name] = max(self._last_loss.get(name, view.lost_at), view.lost_at)

    def set_free(self, view: WorkerView, free: int) -> None:
        """Every change of a view's free slots goes through here: it keeps the set of workers with one."""
        view.free = max(0, free)
        if view.free:
            self._free.add(view.worker)
        else:
            self._free.discard(view.worker)

    # -- dispatch --------------------------------------------------------------------------
    def live(self, now: float) -> list[WorkerView]:
        return [w for w in self.views.values() if leases.is_live(w, now, self._policy)]

    def serving(self, backlogged: Iterable[str], now: float) -> dict[str, Picker]:
        """Backlog lane (a queue, or a queue and required labels: ``routing``) -> a ``Picker`` over
        the live workers serving it with a free slot, for the lanes that have one. O(workers with
        a free slot x lanes), not O(fleet): a full fleet costs nothing."""
        lanes = list(backlogged)
        free: dict[str, list[WorkerView]] = {}
        for worker in self._free:
            w = self.views[worker]
            if not leases.is_live(w, now, self._policy):
                continue
            for lane in lanes:
                if routing.serves(w, lane):
                    free.setdefault(lane, []).append(w)
        return {lane: Picker(ws, *self._rate(lane, now), self._order) for lane, ws in free.items()}

    def _rate(self, lane: str, now: float) -> tuple[float, float]:
        """Tasks/s of the lane's live workers of known duration, and the shortest duration (0: none
        known): ``leases.pick_worker``'s horizon, over the whole fleet, read at most every RATE_EVERY s."""
        cached = self._rates.get(lane)
        if cached is not None and now - cached[0] < RATE_EVERY:
            return cached[1], cached[2]
        timed = [w for w in self.views.values()
                 if w.duration > 0 and routing.serves(w, lane) and leases.is_live(w, now, self._policy)]
        rate = sum(max(w.concurrency, 1) / w.duration for w in timed)
        shortest = min((w.duration for w in timed), default=0.0)
        self._rates[lane] = (now, rate, shortest)
        return rate, shortest

    def assign(self, record: TaskRecord, picker: Picker, waiting: int) -> WorkerView | None:
        """The worker to dispatch the record to (``Picker.pick``), its slot taken; or None."""
        view = picker.pick(waiting)
        if view is not None:
            alone = leases.runs_alone(record, self._policy)  # alone: it takes the worker
            self.set_free(view, 0 if alone else view.free - 1)
            picker.taken(view)
            self._inflight.setdefault(view.worker, set()).add(record.id)
        return view

    def held_up(self, record: TaskRecord, now: float) -> bool:
        """True when a task nobody accounts for is more likely waiting than lost: it is queued
        (or dispatched to one worker) and a live worker of its queue (or that worker) has had no
        free slot within the dispatch timeout. Such a task sits in that worker's broker queue,
        behind the others, where no heartbeat can list it; presuming it lost would run it twice.
        A task really lost meanwhile (a broker that dropped it, a worker that died holding it
        unstarted) is dispatched again once those workers have had room for a dispatch timeout."""
        if record.state not in (QUEUED, DISPATCHED) or record.deadline is None or record.deadline > now:
            return False
        if record.expires_at is not None and record.expires_at <= now:
            return False
        if record.state == DISPATCHED:
            view = self.views.get(record.worker or "")
            candidates = [view] if view is not None else []
        else:
            candidates = [w for w in self.views.values() if record.queue in w.queues]
        window = self._policy.dispatch_timeout
        return any(w.full_at is not None and now - w.full_at <= window and leases.is_live(w, now, self._policy)
                   for w in candidates)

    def lost_unseen(self, record: TaskRecord, now: float) -> bool:
        """Every worker of the queued record's queue has shown that it does not hold it
        (``leases.lost_unseen``)."""
        workers = [w for w in self.views.values() if record.queue in w.queues]
        return leases.lost_unseen(record, workers, now, self._policy)

    def recheck_s(self, queue: str) -> float:
        """How soon to look again at a task of ``queue`` that may have gone down with a worker: one
        heartbeat of its slowest worker (a ``drained`` worker shows it in its next heartbeat)."""
        beats = [w.heartbeat_s for w in self.views.values() if queue in w.queues and w.heartbeat_s]
        return min(self._policy.dispatch_timeout, max(beats, default=self._policy.default_heartbeat_s))

    def died_since(self, record: TaskRecord) -> bool:
        """A worker of the record's queue went offline since the task was seen: O(1), it is fired for
        every task nobody accounts for (a broker that dropped 1,000 tasks, a fleet of 10,000)."""
        last = self._last_loss.get(record.queue)
        return last is not None and last >= record.created


class Picker:
    """``leases.pick_worker`` over one dispatch pass, O(log n) a pick: a heap of the live workers
    with a free slot by (most free slots, shortest duration, first seen), as ``pick_worker`` ranks them
over the fleet in the order it was heard. The horizon only shrinks
    as the backlog does, so a worker beyond it is dropped for the rest of the pass."""

    def __init__(self, workers: list[WorkerView], rate: float, shortest: float, order: dict[str, int]) -> None:
        self._rate = rate
        self._shortest = shortest
        self._order = order
        self._heap = [(-w.free, w.duration, order[w.worker], w) for w in workers if w.free > 0]
        heapq.heapify(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)

    def pick(self, backlog: int) -> WorkerView | None:
        horizon = backlog / self._rate + self._shortest if self._rate > 0 else float("inf")
        while self._heap:
            _, duration, _, w = self._heap[0]
            if w.free > 0 and duration <= horizon:
                return w
            heapq.heappop(self._heap)
        return None

    def taken(self, view: WorkerView) -> None:
        """``view`` (the last pick) took a slot: back in the heap at its new rank, if it has one left."""
        heapq.heappop(self._heap)
        if view.free > 0:
            heapq.heappush(self._heap, (-view.free, view.duration, self._order[view.worker], view))
