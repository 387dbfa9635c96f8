"""A private PostgreSQL database per test, on the server at 127.0.0.1:5432 (trust auth, user postgres).

The server runs on the development machines and in CI (.ci/run); a test creates a database with a
unique name and drops it at teardown (``WITH (FORCE)``: a coordinator killed with ``kill -9`` may
leave a session behind for a moment). ``MQTT_TASKS_POSTGRES`` names another server's admin URL.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from mqtt_tasks.store.opening import open_store
from mqtt_tasks.store.sqlite import SQLiteStore

ADMIN_URL = os.environ.get("MQTT_TASKS_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def database_url(name: str) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + name


@contextmanager
def private_database() -> Iterator[str]:
    """Create a database with a unique name, yield its URL, drop it."""
    import psycopg

    name = f"mqtt_tasks_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield database_url(name)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")



def store_at(location: str) -> SQLiteStore:
    """The store ``open_store`` opens at ``location`` (PostgreSQL's is an SQLiteStore too)."""
    store = open_store(location)
    assert isinstance(store, SQLiteStore)
    return store
