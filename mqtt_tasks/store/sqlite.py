"""The default store: one SQLite file in WAL mode, written in batches.

``synchronous=NORMAL`` with WAL: a committed batch survives a crash of the process (``kill -9``);
a power cut can lose the last batches. Pass ``synchronous="FULL"`` to survive that too.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from .base import LIVE_STATES, Store, TaskRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id      TEXT PRIMARY KEY,
    state   TEXT NOT NULL,
    queue   TEXT,
    updated REAL NOT NULL,
    created REAL NOT NULL,
    data    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_state_updated ON tasks (state, updated);
CREATE INDEX IF NOT EXISTS tasks_updated ON tasks (updated);
"""
_UPSERT = ("INSERT INTO tasks (id, state, queue, updated, created, data) VALUES (?, ?, ?, ?, ?, ?) "
           "ON CONFLICT(id) DO UPDATE SET state=excluded.state, queue=excluded.queue, "
           "updated=excluded.updated, data=excluded.data")
_LIVE = ",".join(f"'{s}'" for s in sorted(LIVE_STATES))


class SQLiteStore(Store):
    def __init__(self, path: str, *, synchronous: str = "NORMAL") -> None:
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"invalid synchronous mode {synchronous!r}")
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self._db.executescript(_SCHEMA)
        self._pending: dict[str, TaskRecord] = {}

    def put(self, record: TaskRecord) -> None:
        self._pending[record.id] = record

    def commit(self) -> int:
        if not self._pending:
            return 0
        rows = [_row(r) for r in self._pending.values()]
        self._db.execute("BEGIN")
        try:
            self._db.executemany(_UPSERT, rows)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        self._pending.clear()
        return len(rows)

    def get(self, task_id: str) -> TaskRecord | None:
        pending = self._pending.get(task_id)
        if pending is not None:
            return TaskRecord.from_dict(json.loads(_row(pending)[5]))
        row = self._db.execute("SELECT data FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return TaskRecord.from_dict(json.loads(row[0])) if row else None

    def load_live(self) -> list[TaskRecord]:
        self.commit()
        rows = self._db.execute(f"SELECT data FROM tasks WHERE state IN ({_LIVE}) ORDER BY created").fetchall()
        return [TaskRecord.from_dict(json.loads(r[0])) for r in rows]

    def list_tasks(self, state: str | None = None, limit: int = 100) -> list[TaskRecord]:
        self.commit()
        if state is None:
            rows = self._db.execute("SELECT data FROM tasks ORDER BY updated DESC LIMIT ?", (limit,))
        else:
            rows = self._db.execute("SELECT data FROM tasks WHERE state = ? ORDER BY updated DESC LIMIT ?",
                                    (state, limit))
        return [TaskRecord.from_dict(json.loads(r[0])) for r in rows.fetchall()]

    def counts(self) -> dict[str, int]:
        self.commit()
        return dict(self._db.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state").fetchall())

    def close(self) -> None:
        try:
            self.commit()
        finally:
            self._db.close()


def _row(record: TaskRecord) -> tuple[Any, ...]:
    data = json.dumps(record.to_dict(), separators=(",", ":"), default=str)
    return (record.id, record.state, record.queue, record.updated, record.created, data)
