"""Status states and name rules: plain constants, importable without pydantic."""

from __future__ import annotations

TASK_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.:\-]{0,199}$"

# Status states. Terminal states end a task; the others describe progress.
STARTED = "started"
SUCCEEDED = "succeeded"
FAILED = "failed"
DEAD = "dead"
CANCELLED = "cancelled"
EXPIRED = "expired"
DEFERRED = "deferred"
RETRYING = "retrying"
PROGRESS = "progress"
QUEUED = "queued"
DUPLICATE = "duplicate"

TERMINAL_STATES = frozenset({SUCCEEDED, DEAD, CANCELLED, EXPIRED})
"""States that end a task for good. ``failed`` ends an *attempt*; it is final for the task
only when no retry follows (see ``StatusEvent.final``)."""
