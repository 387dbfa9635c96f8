"""Capability routing: a task that ``requires`` labels runs only on a worker that has them all.

Built on these facts (docs/routing.md, protocol/labels.py):

- Workers declare their labels in the heartbeat; the fleet keeps them on each ``WorkerView``.
- A worker that takes a task from the shared topic and lacks a label hands it over (``deferred``
  with ``routed``): it is not full, so its free slots stay as they were. Like a delayed
  hand-over, a late one never sends out again a task the coordinator already took charge of;
  unlike one, a task this coordinator dispatched to that very worker (whose labels changed since)
  goes back to the backlog at once.
- The backlog keeps a lane per (queue, required labels): a task nobody can run waits in its own
  lane and holds up no other task; it is dispatched as soon as a live worker with the labels has a
  free slot (a heartbeat of a worker that joins is enough). ``status`` says why it waits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .. import leases
from ..protocol import labels
from ..protocol.states import BACKLOG, DISPATCHED

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ..leases import Effect, WorkerView
    from ..store.base import TaskRecord


def lane_of(record: TaskRecord) -> str:
    """The backlog lane of a record: its queue, and the labels its task requires."""
    return labels.lane(record.queue, labels.required(record.body))


def serves(view: WorkerView, lane: str) -> bool:
    """The worker takes the lane's queue and has every label it requires."""
    queue, requires = labels.parse_lane(lane)
    return queue in view.queues and requires <= view.labels


def on_unmatched(record: TaskRecord, attempt: int, worker: str | None, body: Mapping[str, Any] | None,
                 now: float) -> list[Effect]:
    """A worker handed over a task because it lacks a label the task requires."""
    if record.state == DISPATCHED and record.worker == worker and attempt == record.attempt:
        return leases.on_deferred(record, attempt, worker, body, now)  # dispatched there: back to the backlog
    return leases.on_delayed_handover(record, attempt, worker, body, now)


def waiting_reason(record: TaskRecord, live: Iterable[WorkerView]) -> str | None:
    """Why a backlog task that requires labels is not running (None for any other record):
    no live worker of its queue has them all, or none of those has a free slot."""
    requires = labels.required(record.body)
    if record.state != BACKLOG or not requires:
        return None
    of_queue = [w for w in live if record.queue in w.queues]
    able = [w for w in of_queue if requires <= w.labels]
    if not able:
        seen = "; ".join(f"{w.worker}: {labels.describe(w.labels)}" for w in of_queue) or "none"
        return (f"no live worker of queue {record.queue} has the labels it requires ({labels.describe(requires)}); "
                f"live workers of the queue and their labels: {seen}")
    return f"waiting for a free slot on a worker with {labels.describe(requires)}: " + \
        ", ".join(sorted(w.worker for w in able))
