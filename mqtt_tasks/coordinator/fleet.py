"""The fleet: what the coordinator believes about each worker, and its slot accounting.

Built on these facts (DESIGN.md "Recommended mechanics", BROKER-FACTS.md):

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


class Fleet:
    """Worker views by id, and the dispatches in flight to each worker."""

    def __init__(self, policy: LeasePolicy) -> None:
        self._policy = policy
        self.views: dict[str, WorkerView] = {}
        self._inflight: dict[str, set[str]] = {}

    def view(self, worker: str) -> WorkerView:
        view = self.views.get(worker)
        if view is None:
            view = self.views[worker] = WorkerView(worker)
        return view

    # -- status events -------------------------------------------------------------------
    def started(self, worker: str, record: TaskRecord) -> WorkerView:
        """``worker`` started the record's task: a dispatch confirmed, or a slot taken."""
        view = self.view(worker)
        if record.state == DISPATCHED and record.worker == worker:
            self._inflight.get(worker, set()).discard(record.id)
        else:
            view.free = max(0, view.free - 1)
        return view

    def finished(self, worker: str | None, record: TaskRecord, now: float) -> None:
        """``worker`` reported a result for the record's task: its slot is free again."""
        if worker is None:
            return
        view = self.view(worker)
        if record.state == STARTED and record.worker == worker and record.started_at:
            leases.observe_duration(view, max(now - record.started_at, 0.0))
        if record.worker != worker or record.state not in (STARTED, DISPATCHED):
            return  # never counted against its slots (see the module docstring)
        if leases.runs_alone(record, self._policy):
            view.free = view.concurrency or 1  # it ran alone: the worker had nothing else running
            return
        view.free = min(view.free + 1, view.concurrency or view.free + 1)

    def deferred(self, worker: str, record: TaskRecord, *, full: bool = True) -> None:
        """``worker`` handed the task back: it has no free slot (``full``; not so for a task it handed
        over because its ``not_before`` is ahead)."""
        if full:
            self.view(worker).free = 0
        if record.state == DISPATCHED and record.worker == worker:
            self._inflight.get(worker, set()).discard(record.id)

    # -- worker states -------------------------------------------------------------------
    def heard(self, worker: str, state: WorkerState, now: float, retained: bool) -> WorkerView:
        """A heartbeat (or Last Will) of ``worker``; the free slots are set by ``reconcile``."""
        view = self.view(worker)
        view.state = state.state
        if state.state == OFFLINE:
            view.free = 0
            return view
        view.queues = tuple(state.queues)
        view.labels = frozenset(state.labels or ())
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
        self.views[worker].free = max(0, (state.free or 0) - len(pending - held.keys())) if state.state == ONLINE else 0

    def lost(self, worker: str, now: float) -> None:
        """``worker`` went offline: nothing is in flight to it any more."""
        self.view(worker).lost_at = now
        self._inflight.pop(worker, None)

    # -- dispatch --------------------------------------------------------------------------
    def live(self, now: float) -> list[WorkerView]:
        return [w for w in self.views.values() if leases.is_live(w, now, self._policy)]

    def serving(self, backlogged: Iterable[str], now: float) -> dict[str, list[WorkerView]]:
        """Backlog lane (a queue, or a queue and required labels: ``routing``) -> the live workers
        serving it, for the lanes where one has a free slot."""
        live = self.live(now)
        serving: dict[str, list[WorkerView]] = {}
        for lane in backlogged:
            workers = [w for w in live if routing.serves(w, lane)]
            if any(w.free > 0 for w in workers):
                serving[lane] = workers
        return serving

    def assign(self, record: TaskRecord, workers: list[WorkerView], waiting: int, now: float) -> WorkerView | None:
        """The worker to dispatch the record to (``leases.pick_worker``), its slot taken; or None."""
        view = leases.pick_worker(workers, record.queue, now, self._policy, backlog=waiting)
        if view is not None:
            view.free = 0 if leases.runs_alone(record, self._policy) else view.free - 1  # alone: it takes the worker
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
        """A worker of the record's queue went offline since the task was seen."""
        return any(w.lost_at is not None and w.lost_at >= record.created and record.queue in w.queues
                   for w in self.views.values())
