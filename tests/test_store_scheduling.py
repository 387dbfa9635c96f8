"""The store and the scheduling fields: a scheduled record is live and survives a reopen; a file
written before ``not_before``/``priority`` existed opens unchanged (no migration is needed: the
record is one JSON column, and the live-state filter is built from ``LIVE_RECORD_STATES``)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from mqtt_tasks.store import MemoryStore, SQLiteStore
from mqtt_tasks.store.base import BACKLOG, SCHEDULED, TaskRecord
from mqtt_tasks.store.opening import open_store

OLD_SCHEMA = """
CREATE TABLE tasks (id TEXT PRIMARY KEY, state TEXT NOT NULL, queue TEXT, updated REAL NOT NULL,
                    created REAL NOT NULL, data TEXT NOT NULL);
CREATE INDEX tasks_state_updated ON tasks (state, updated);
CREATE INDEX tasks_updated ON tasks (updated);
"""


@pytest.fixture(params=["sqlite", "postgres"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where a store that survives a reopen lives: an SQLite file or a PostgreSQL database."""
    if request.param == "sqlite":
        yield str(tmp_path / "s.db")
        return
    from tests.postgres import private_database

    with private_database() as url:
        yield url


def test_a_scheduled_record_is_live_and_survives_a_reopen(location: str) -> None:
    with open_store(location) as store:
        store.put(TaskRecord(id="t1", state=SCHEDULED, not_before=2e9, priority=8, deadline=2e9, body={"id": "t1"}))
    with open_store(location) as store:
        (record,) = store.load_live()
        assert (record.state, record.not_before, record.priority, record.deadline) == (SCHEDULED, 2e9, 8, 2e9)
    memory = MemoryStore()
    memory.put(TaskRecord(id="t1", state=SCHEDULED, not_before=2e9))
    assert [r.id for r in memory.load_live()] == ["t1"]


def test_a_file_from_before_the_scheduling_fields_opens_and_recovers(tmp_path: Path) -> None:
    path = str(tmp_path / "old.db")
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    old = {"id": "t0", "state": BACKLOG, "attempt": 2, "queue": "q", "body": {"id": "t0", "task": "work"},
           "created": 1.0, "updated": 2.0, "history": []}  # as the previous version wrote it
    db.execute("INSERT INTO tasks VALUES (?, ?, ?, ?, ?, ?)", ("t0", BACKLOG, "q", 2.0, 1.0, json.dumps(old)))
    db.commit()
    db.close()
    with SQLiteStore(path) as store:
        (record,) = store.load_live()
        assert (record.id, record.attempt, record.not_before, record.priority) == ("t0", 2, None, None)
        store.put(TaskRecord(id="t1", state=SCHEDULED, not_before=2e9))
    with SQLiteStore(path) as store:
        assert sorted(r.id for r in store.load_live()) == ["t0", "t1"]
