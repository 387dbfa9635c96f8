"""The coordinator: a thin loop around the pure lease / retry / dispatch policy of ``leases``.

Its parts, one module each (read them in this order):

- ``lifecycle``: the ``Coordinator`` facade (build, connect, start, stop; the hand-offs from the
  network thread; read-only views) and ``run_coordinator``.
- ``loop``: the one thread that owns all state: batch -> decide -> commit -> ack -> publish.
- ``handlers``: what each incoming message does; status events by an explicit table of states.
- ``records``: the live records over the durable store (``store/``); recovery after a restart.
- ``timers``: when each live record is due again, and what happens when it is.
- ``fleet``: the workers as the coordinator sees them: free slots, dispatches in flight.
- ``backlog``: tasks waiting for a free slot, dispatched oldest first to workers' inboxes.
- ``ratelimits``: the backlog's gate for tasks with a ``rate_limit``: parked while their bucket is
  at its limit, the windows kept in the store (the policy: ``mqtt_tasks.ratelimits``).
- ``effects``: the policy's effects as topics and payloads, published after the commit.
- ``queries``: the answers on the query topic, and ``query_status`` / ``query_tasks`` /
  ``query_task_page`` / ``query_stats`` that ask them.
- ``admin``: the operator's ops on the query topic, ``retry`` and ``purge``, and ``retry_task`` /
  ``purge_queue`` that ask for them.
- ``cancels``: cancel requests on ``P/cancel/{id}``, and ``request_cancel`` that makes one.
- ``schedules``: periodic tasks, fired at most once per fire time.
- ``deploys``: code rollouts: the rollout records, the workers' reports, the waves (docs/deploy.md;
  the policy is ``mqtt_tasks.rollouts``).
- ``workflows``: chains, groups, chords and sagas on ``P/workflows``; their steps are tasks, and
  the policy is ``mqtt_tasks.flow`` (docs/workflows.md).
- ``standby``: several coordinators on one prefix and one database, one leading
  (``HighAvailability``, ``run_high_availability``): stand by, lead, step down.

The policy itself is ``mqtt_tasks.leases`` (pure functions of record, event and ``now``). See
docs/coordinator.md.
"""

from ..errors import (  # the query errors are importable from here too
    CoordinatorTimeoutError,
    DecodeError,
    MqttTasksError,
    PayloadTooLargeError,
    TaskNotFoundError,
    TransportError,
)
from .admin import purge_queue, retry_task
from .cancels import request_cancel
from .effects import SOURCE, final_event
from .lifecycle import Coordinator, run_coordinator
from .loop import FORCED_TICK_S, ConnectionLike
from .queries import query_stats, query_status, query_task_page, query_tasks, record_summary, record_view
from .standby import HighAvailability, run_high_availability

__all__ = [
    "FORCED_TICK_S",
    "SOURCE",
    "ConnectionLike",
    "Coordinator",
    "CoordinatorTimeoutError",
    "DecodeError",
    "HighAvailability",
    "MqttTasksError",
    "PayloadTooLargeError",
    "TaskNotFoundError",
    "TransportError",
    "final_event",
    "purge_queue",
    "query_stats",
    "query_status",
    "query_task_page",
    "query_tasks",
    "record_summary",
    "record_view",
    "request_cancel",
    "retry_task",
    "run_coordinator",
    "run_high_availability",
]
