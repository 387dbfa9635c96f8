"""Admin: the operator's rpc ops ``retry`` and ``purge``, and the client side that asks for them.

Built on these facts:

- Both arrive on the query topic (``P/rpc/coordinator``) like the queries (``queries``): a JSON
  object with an ``op``, a ``correlation`` and a reply topic, answered on the loop's thread. So an
  op sees every record of the batches before it, and what it changes is committed with its batch,
  before the message is acknowledged and before the answer and the status events go out: a
  coordinator ``kill -9`` in between loses nothing (the broker redelivers the request, which then
  finds the work done: ``retry`` of a live task and ``purge`` of an empty queue change nothing).
- The decisions are the policy's (``leases.retry_refusal``, ``on_retry``, ``on_purged``, pure).
- ``retry {id}``: a ``dead``, ``cancelled`` or ``expired`` task runs again as a new attempt
  (attempt + 1, a fresh attempt budget), its history kept; anything else is refused with the
  reason. ``purge {queue, keep_scheduled}``: every task of that queue the coordinator holds and no
  worker does (``backlog``, ``retrying``, and ``scheduled`` unless ``keep_scheduled``) ends
  ``cancelled``; the answer counts them by state. A queued, dispatched or started task is not
  touched: a worker may hold it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import leases
from ..errors import MqttTasksError, TaskNotFoundError
from ..protocol.states import SCHEDULED
from ..protocol.topics import is_valid_id
from .queries import _ask, record_summary

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..config import Settings
    from .records import Records

class Admin:
    """The operator's ops on the coordinator's record."""

    def __init__(self, records: Records, clock: Callable[[], float]) -> None:
        self._records = records
        self._clock = clock

    def ops(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        return {"retry": self.retry, "purge": self.purge}

    def retry(self, request: dict[str, Any]) -> dict[str, Any]:
        task_id = request.get("id")
        record = self._records.get(task_id) if isinstance(task_id, str) else None
        if record is None:
            return {"ok": False, "not_found": True, "error": f"no record of task {task_id!r}"}
        refusal = leases.retry_refusal(record)
        if refusal is not None:
            return {"ok": False, "error": refusal}
        self._records.save(record, leases.on_retry(record, self._clock()))
        return {"ok": True, "task": record_summary(record)}

    def purge(self, request: dict[str, Any]) -> dict[str, Any]:
        queue = request.get("queue")
        if not isinstance(queue, str) or not is_valid_id(queue):
            return {"ok": False, "error": f"purge needs a valid queue name, got {queue!r}"}
        states = [s for s in leases.PURGEABLE if not (s == SCHEDULED and request.get("keep_scheduled"))]
        counts = dict.fromkeys(states, 0)
        now = self._clock()
        held = [r for r in self._records.live.values() if r.queue == queue and r.state in counts]
        for record in held:
            counts[record.state] += 1
            self._records.save(record, leases.on_purged(record, queue, now))
        return {"ok": True, "queue": queue, "purged": len(held), "by_state": counts}


# -- the client side ---------------------------------------------------------------------------
def retry_task(settings: Settings, task_id: str, timeout: float = 5.0) -> dict[str, Any]:
    """Run a dead, cancelled or expired task again (a new attempt, its history kept); returns the
    record's summary. ``TaskNotFoundError`` when the coordinator has no record of it,
    ``MqttTasksError`` with the reason when it cannot be retried."""
    answer = _ask(settings, {"op": "retry", "id": task_id}, timeout)
    if not answer.get("ok"):
        error = TaskNotFoundError if answer.get("not_found") else MqttTasksError
        raise error(str(answer.get("error") or f"task {task_id!r} cannot be retried"))
    task: dict[str, Any] = answer["task"]
    return task


def purge_queue(settings: Settings, queue: str, *, keep_scheduled: bool = False,
                timeout: float = 5.0) -> dict[str, Any]:
    """Cancel every task of ``queue`` the coordinator holds (its backlog, retries and, unless
    ``keep_scheduled``, delayed tasks); returns ``{"purged": n, "by_state": {...}}``."""
    answer = _ask(settings, {"op": "purge", "queue": queue, "keep_scheduled": keep_scheduled}, timeout)
    if not answer.get("ok"):
        raise MqttTasksError(str(answer.get("error") or f"cannot purge queue {queue!r}"))
    return answer
