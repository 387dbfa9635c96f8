"""The state vocabulary of the wire contract, defined once: plain constants, importable without
pydantic (a worker on a small device never loads it).

Everything that names a state imports it from here: the pydantic models (``messages.py``), the
dependency-free validator (``validate.py``), the coordinator's record (``store/base.py``) and the
event builders (``events.py``).
"""

from __future__ import annotations

TASK_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.:\-]{0,199}$"

DEFAULT_MAX_ATTEMPTS = 3
"""Attempts before a task is dead when neither the task nor its registration says otherwise."""

# Status states (``P/status/{id}``). Terminal states end a task; the others describe progress.
QUEUED = "queued"
STARTED = "started"
PROGRESS = "progress"
SUCCEEDED = "succeeded"
FAILED = "failed"
RETRYING = "retrying"
DEFERRED = "deferred"
DEAD = "dead"
CANCELLED = "cancelled"
EXPIRED = "expired"
DUPLICATE = "duplicate"
SCHEDULED = "scheduled"
"""The coordinator holds the task until its ``not_before`` time (a record state and a status event)."""
COMPENSATING = "compensating"
"""A saga's step ended without success: the compensations of the steps done before it run, last first."""
COMPENSATED = "compensated"
"""A saga that failed and whose every compensation succeeded: final (docs/workflows.md)."""

STATUS_STATES = (QUEUED, STARTED, PROGRESS, SUCCEEDED, FAILED, RETRYING, DEFERRED, DEAD, CANCELLED, EXPIRED,
                 DUPLICATE, SCHEDULED, COMPENSATING, COMPENSATED)
"""Every state a status event may carry, in the order the JSON Schema lists them."""

TERMINAL_STATES = frozenset({SUCCEEDED, DEAD, CANCELLED, EXPIRED})
"""States that end a task for good. ``failed`` ends an *attempt*; it is final for the task
only when no retry follows (see ``StatusEvent.final``)."""

# Record-only states: the coordinator's record says more than the wire does. ``dispatched``: sent
# to one worker's inbox; ``backlog``: held until a worker has a free slot (on the wire: ``deferred``).
DISPATCHED = "dispatched"
BACKLOG = "backlog"

RECORD_STATES = (QUEUED, DISPATCHED, STARTED, BACKLOG, RETRYING, SUCCEEDED, DEAD, CANCELLED, EXPIRED, SCHEDULED)
"""Every state a coordinator's record may be in (``mqtt-tasks tasks --state``)."""

LIVE_RECORD_STATES = frozenset({QUEUED, DISPATCHED, STARTED, BACKLOG, RETRYING, SCHEDULED})

# Workflows (chains, groups, chords, sagas: docs/workflows.md). A workflow is ``running``, a saga
# ``compensating`` after a step failed; it ends ``succeeded``, ``dead`` (a step failed; for a saga:
# a compensation failed too), ``compensated`` (a saga rolled back whole) or ``cancelled`` (a cancel
# request; a cancelled saga is rolled back instead, and ends ``compensated``). Its steps are tasks, in
# the task states, plus ``pending`` (not submitted yet) and ``skipped`` (never to be submitted).
RUNNING = "running"
PENDING = "pending"
SKIPPED = "skipped"
WORKFLOW_KINDS = ("chain", "group", "chord", "saga")
NESTED_WORKFLOW_KINDS = ("chain", "group", "chord")
"""What a step may be besides a task: a saga does not nest (docs/workflows.md)."""
WORKFLOW_STATES = (RUNNING, COMPENSATING, SUCCEEDED, DEAD, COMPENSATED, CANCELLED)
WORKFLOW_TERMINAL_STATES = frozenset({SUCCEEDED, DEAD, COMPENSATED, CANCELLED})

PRIORITY_MIN, PRIORITY_MAX, DEFAULT_PRIORITY = 0, 9, 5
"""A task's ``priority``: 0-9, higher first; absent means 5. It orders the coordinator's backlog
only (docs/scheduling.md): workers take the shared topic in arrival order."""

# Worker states (retained on ``P/workers/{id}``) and the coordinator's presence.
ONLINE = "online"
DRAINING = "draining"
OFFLINE = "offline"
DEGRADED = "degraded"
"""The coordinator's presence while its store cannot commit: it records in memory, dispatches and
acknowledges nothing until the store is back; workers treat it as absent (docs/coordinator.md)."""

WORKER_STATES = (ONLINE, DRAINING, OFFLINE)
COORDINATOR_STATES = (ONLINE, DEGRADED, OFFLINE)
"""The states of the coordinator's retained presence on ``P/coordinator``."""
