"""The worker: receive -> start or defer -> run on a bounded pool -> report.

Its parts, in the order a task meets them:

- ``intake``: a message becomes a task, or is settled here with a verdict (rejected, duplicate,
  expired, unknown task) without taking a slot;
- ``slots``: free slots, the line of waiting tasks, and when a waiting task is better handed to
  the coordinator (pure, of ``now``);
- ``dispatch``: the decisions, under one lock, by whichever thread has the event (the network
  thread for a message, a task thread for a freed slot, the timer thread for what falls due);
- ``running``: the attempts held, their ``started`` announcements, the snapshot;
- ``reporter``: outcomes -> status events, replies, error reports;
- ``heartbeat``: the retained worker state;
- ``deploys``: with ``deploy=(key, dir)``, signed code bundles applied between tasks (docs/deploy.md);
- ``outbox``: with ``outbox=PATH``, what the reporter publishes kept on disk until the broker has
  it (docs/offline.md);
- ``link``: the coordinator's presence and its control ops (cancel);
- ``fleet_clock``: the coordinator's clock as read from its presence, by which expiry is judged;
- ``stats``: thread-safe counters;
- ``lifecycle``: the ``Worker`` that builds the parts, names its threads and stops them in order.
"""

from .lifecycle import Worker, default_worker_id
from .running import HeldAttempt, WorkerSnapshot
from .slots import MAX_QUEUED_QOS0

__all__ = ["MAX_QUEUED_QOS0", "HeldAttempt", "Worker", "WorkerSnapshot", "default_worker_id"]
