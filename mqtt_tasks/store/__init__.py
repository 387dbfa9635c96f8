"""The coordinator's durable record: an interface (``base``) and its implementations.

``SQLiteStore`` (WAL, batched commits) is the default; ``PostgresStore`` runs the same SQL on
PostgreSQL (``postgres``: a dialect shim over psycopg 3, the ``postgres`` extra, imported only when
a store is opened), so that several coordinators can share one database, one of them leading
(``leadership``: the lease row and its epoch); ``MemoryStore`` is for tests and for a coordinator
that need not survive a restart. ``opening.open_store`` picks one from a location. One contract
test suite runs against all three.
"""

from .base import LIVE_STATES, TERMINAL, Store, TaskRecord
from .leadership import Lease
from .memory import MemoryStore
from .opening import open_store
from .postgres import PostgresStore
from .schedules import ScheduleRecord
from .sqlite import SQLiteStore

__all__ = ["LIVE_STATES", "TERMINAL", "Lease", "MemoryStore", "PostgresStore", "SQLiteStore", "ScheduleRecord", "Store",
           "TaskRecord", "open_store"]
