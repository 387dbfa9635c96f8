"""The coordinator's durable record: an interface (``base``) and two implementations.

``SQLiteStore`` (WAL, batched commits) is the default; ``MemoryStore`` is for tests and for a
coordinator that need not survive a restart. One contract test suite runs against both.
"""

from .base import LIVE_STATES, TERMINAL, Store, TaskRecord
from .memory import MemoryStore
from .schedules import ScheduleRecord
from .sqlite import SQLiteStore

__all__ = ["LIVE_STATES", "TERMINAL", "MemoryStore", "SQLiteStore", "ScheduleRecord", "Store", "TaskRecord"]
