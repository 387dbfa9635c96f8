"""Which store a location names: an SQLite path, a PostgreSQL URL, or nothing (in memory)."""

from __future__ import annotations

from .base import Store
from .memory import MemoryStore
from .sqlite import SQLiteStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(location: str) -> bool:
    return location.startswith(POSTGRES_SCHEMES)


def open_store(location: str | None) -> Store:
    """``postgresql://user@host/dbname``: ``PostgresStore`` (needs the ``postgres`` extra);
    a path: ``SQLiteStore``; None or empty: ``MemoryStore``."""
    if not location:
        return MemoryStore()
    if is_postgres(location):
        from .postgres import PostgresStore  # psycopg is an optional extra: imported only here

        return PostgresStore(location)
    return SQLiteStore(location)
