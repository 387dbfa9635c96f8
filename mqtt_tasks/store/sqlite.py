"""The default store: one SQLite file in WAL mode, written in batches.

Schema changes are named migrations (``MIGRATIONS``), each applied once to a file that lacks it
and recorded in ``schema_migrations``: a file written by an older version is brought up to date
when it is opened, and migrations written on parallel branches merge as two list entries.

``synchronous=NORMAL`` with WAL: a committed batch survives a crash of the process (``kill -9``);
a power cut can lose the last batches. Pass ``synchronous="FULL"`` to survive that too.

The boundary for SQLite's errors: every ``sqlite3.Error`` (a path that cannot be opened as a
database, a full disk, a corrupt or locked file) leaves this module as ``errors.StoreError`` naming
the file, with the driver's exception as its cause.

A commit that fails (a full or read-only disk) is rolled back whole and keeps the buffered
records, so it can be tried again: the coordinator does, with backoff, until the disk is back
(measured on a 2 MiB tmpfs: a full disk fails the commit with "database or disk is full", and
reads still work; after space returns the same connection commits again). A failed commit also
checkpoints the WAL (``_checkpoint``): on a small disk the WAL alone can fill it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic_core import to_json

from ..errors import StoreError
from .base import LIVE_STATES, Store, TaskRecord
from .listing import Key, TaskFilter
from .schedules import ScheduleRecord
from .workflows import WorkflowRecord

if TYPE_CHECKING:
    from .leadership import Lease

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id      TEXT PRIMARY KEY,
    state   TEXT NOT NULL,
    queue   TEXT,
    updated REAL NOT NULL,
    created REAL NOT NULL,
    data    TEXT NOT NULL
);
"""
# The ``task`` column and the indexes of the task list come with migration 0004 (a file from before
# it has ``tasks_state_updated (state, updated)`` and ``tasks_updated (updated)``, which it replaces).
MIGRATIONS: tuple[tuple[str, str], ...] = (
    ("0001-schedules", "CREATE TABLE IF NOT EXISTS schedules (name TEXT PRIMARY KEY, data TEXT NOT NULL)"),
    ("0002-workflows", "CREATE TABLE IF NOT EXISTS workflows (id TEXT PRIMARY KEY, state TEXT NOT NULL, "
                       "updated REAL NOT NULL, data TEXT NOT NULL)"),
    ("0002-leadership", "CREATE TABLE IF NOT EXISTS leadership (prefix TEXT PRIMARY KEY, holder TEXT NOT NULL, "
                        "epoch INTEGER NOT NULL, expires REAL NOT NULL)"),
    ("0002-rate-windows", "CREATE TABLE IF NOT EXISTS rate_windows (bucket TEXT PRIMARY KEY, data TEXT NOT NULL)"),
    ("0003-rollouts", "CREATE TABLE IF NOT EXISTS rollouts (id TEXT PRIMARY KEY, created REAL NOT NULL, "
                      "data TEXT NOT NULL)"),
    ("0004-task-list", "ALTER TABLE tasks ADD COLUMN task TEXT; UPDATE tasks SET task = {data_task}; "
                       "DROP INDEX IF EXISTS tasks_state_updated; DROP INDEX IF EXISTS tasks_updated; "
                       "CREATE INDEX tasks_updated_id ON tasks (updated, id); "
                       "CREATE INDEX tasks_state_updated_id ON tasks (state, updated, id); "
                       "CREATE INDEX tasks_queue_updated_id ON tasks (queue, updated, id); "
                       "CREATE INDEX tasks_task_updated_id ON tasks (task, updated, id); "
                       "CREATE INDEX tasks_queue_state_updated_id ON tasks (queue, state, updated, id)"),
)
"""(name, SQL) in order; a name is never reused or edited once released. A migration may be several
statements separated by ``;`` (one transaction); ``{data_task}`` is the store's SQL for the task name
in a row's JSON ``data`` (``SQLiteStore.DATA_TASK``)."""
TASK_COLUMNS = "id, state, queue, task, updated, created, data"
"""The columns of a row of ``tasks``, in the order of ``_row``'s tuple."""
_UPSERT = (f"INSERT INTO tasks ({TASK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
           "ON CONFLICT(id) DO UPDATE SET state=excluded.state, queue=excluded.queue, task=excluded.task, "
           "updated=excluded.updated, data=excluded.data")
WAL_CHECKPOINT_PAGES = 256
"""Checkpoint the WAL when it passes this many pages (1 MiB with 4 KiB pages; SQLite's default is
1,000). The WAL is what grows on a busy coordinator; a smaller one leaves room to recover on a small
disk (a 2 MiB tmpfs in tests/test_faults.py filled up with WAL alone), at no measurable cost."""
_CHUNK = 500  # ids per SELECT ... IN (...): below SQLite's oldest variable limit (999)
_LIVE = ",".join(f"'{s}'" for s in sorted(LIVE_STATES))


class SQLiteStore(Store):
    NOW = "((julianday('now') - 2440587.5) * 86400.0)"
    """SQL for the database's clock, in seconds since the epoch (leadership leases run on it)."""
    DATA_TASK = "json_extract(data, '$.task')"
    """SQL for the task name in a row's JSON ``data`` (migration 0004 fills the ``task`` column with it)."""

    def __init__(self, path: str, *, synchronous: str = "NORMAL") -> None:
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"invalid synchronous mode {synchronous!r}")
        self.path = path
        self._db: sqlite3.Connection = self._open(path, synchronous.upper())  # or a Dialect: the same face
        self._pending: dict[str, TaskRecord] = {}
        self._read: dict[str, TaskRecord | None] = {}  # prefetched since the last commit (None: no record)
        self._pending_schedules: dict[str, ScheduleRecord | None] = {}  # None: removed
        self._pending_workflows: dict[str, WorkflowRecord] = {}
        self.fence: Lease | None = None  # leadership: checked and renewed in every commit's transaction
        self._pending_windows: dict[str, dict[str, Any] | None] = {}  # None: forgotten
        self._pending_rollouts: dict[str, dict[str, Any]] = {}

    def _open(self, path: str, synchronous: str) -> Any:
        db: Any = None
        try:
            db = self._connect(path, synchronous)
            db.executescript(_SCHEMA)
            _migrate(db, self.DATA_TASK)
        except sqlite3.Error as exc:
            if db is not None:
                db.close()
            raise self._error("cannot open" + _why_not(path), exc) from exc
        return db

    def _connect(self, path: str, synchronous: str) -> Any:
        """The driver's connection (PostgresStore: a psycopg one behind the dialect shim)."""
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={synchronous}")
            db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _error(self, action: str, exc: sqlite3.Error) -> StoreError:
        return StoreError(f"store {self.path}: {action}: {exc}", path=self.path)

    def put(self, record: TaskRecord) -> None:
        self._pending[record.id] = record

    def commit(self) -> int:
        self._read.clear()
        if (not self._pending and not self._pending_schedules and not self._pending_workflows
                and not self._pending_windows and not self._pending_rollouts and not (self.fence and self.fence.due())):
            return 0
        rows = [_row(r) for r in self._pending.values()]
        schedules, windows = self._pending_schedules, self._pending_windows
        flows = [(w.id, w.state, w.updated, _encode(w.to_dict())) for w in self._pending_workflows.values()]
        rollouts = [(i, r.get("created", 0.0), _encode(r)) for i, r in self._pending_rollouts.items()]
        try:
            self._write(rows, schedules, flows, windows, rollouts)
        except sqlite3.Error as exc:
            self._checkpoint()
            raise self._error("cannot commit", exc) from exc
        self._pending.clear()
        self._pending_schedules = {}
        self._pending_workflows = {}
        self._pending_windows = {}
        self._pending_rollouts = {}
        return len(rows) + len(schedules) + len(flows) + len(windows) + len(rollouts)

    def _checkpoint(self) -> None:
        """After a failed commit: move the WAL into the database and truncate it, if that can be done.

        SQLite checkpoints by itself only when the WAL passes 1,000 pages (about 4 MB): on a disk
        with less room than that the WAL fills it and every later commit fails, even one that
        would fit once the WAL's pages are back in the database file (measured: a 2 MiB tmpfs
        holding nothing else fails forever without this). Best effort: on a disk that is really
        full or read-only this fails too, and the next retry tries again."""
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _write(self, rows: list[tuple[Any, ...]], schedules: dict[str, ScheduleRecord | None],
               flows: list[tuple[Any, ...]], windows: dict[str, dict[str, Any] | None],
               rollouts: list[tuple[Any, ...]]) -> None:
        """One transaction: the lease's renewal and every buffered row are sent together (one round
        trip on PostgreSQL, ``_pipelined``), the renewal is verified, and only then is COMMIT sent."""
        db = self._db
        if db.in_transaction:  # a rollback after an earlier failure failed too
            db.execute("ROLLBACK")
        try:
            moved = self._stage(db, rows)  # PostgreSQL: a large batch goes ahead by COPY, in the transaction it begins
            with self._pipelined(db):
                if moved is None:
                    db.execute("BEGIN")
                renewal = self.fence.renew(db) if self.fence is not None else None
                if moved is None:
                    db.executemany(_UPSERT, rows)
                else:
                    db.execute(moved)
                self._send_others(db, schedules, flows, windows, rollouts)
            if self.fence is not None:  # a deposed leader's batch fails here, whole
                self.fence.verify(renewal)
            db.execute("COMMIT")  # SQLITE_FULL / SQLITE_IOERR may come here, from the WAL append
            if self.fence is not None:
                self.fence.committed()
        except BaseException:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise

    def _pipelined(self, db: Any) -> contextlib.AbstractContextManager[Any]:
        """Statements sent in this block are answered together at its end (PostgreSQL's pipeline
        mode); SQLite runs each as it comes."""
        return contextlib.nullcontext()

    def _stage(self, db: Any, rows: list[tuple[Any, ...]]) -> str | None:
        """Before the pipeline: PostgreSQL sends a large batch's rows by COPY (``PostgresStore``), in
        a transaction it begins, and returns the statement that upserts them from there. SQLite: None."""
        return None

    @staticmethod
    def _send_others(db: Any, schedules: dict[str, ScheduleRecord | None], flows: list[tuple[Any, ...]],
                     windows: dict[str, dict[str, Any] | None], rollouts: list[tuple[Any, ...]]) -> None:
        for name, schedule in schedules.items():
            if schedule is None:
                db.execute("DELETE FROM schedules WHERE name = ?", (name,))
            else:
                db.execute("INSERT INTO schedules (name, data) VALUES (?, ?) "
                           "ON CONFLICT (name) DO UPDATE SET data = excluded.data",
                           (name, _encode(schedule.to_dict())))
        db.executemany("INSERT INTO workflows (id, state, updated, data) VALUES (?, ?, ?, ?) ON CONFLICT (id) "
                       "DO UPDATE SET state = excluded.state, updated = excluded.updated, data = excluded.data",
                       flows)
        for bucket, window in windows.items():
            if window is None:
                db.execute("DELETE FROM rate_windows WHERE bucket = ?", (bucket,))
            else:
                db.execute("INSERT INTO rate_windows (bucket, data) VALUES (?, ?) "
                           "ON CONFLICT (bucket) DO UPDATE SET data = excluded.data",
                           (bucket, _encode(window)))
        db.executemany("INSERT INTO rollouts (id, created, data) VALUES (?, ?, ?) "
                       "ON CONFLICT (id) DO UPDATE SET data = excluded.data", rollouts)

    def transact(self, work: Callable[[Any], T]) -> T:
        """Run ``work(connection)`` in a transaction of its own, outside the buffered batch (the
        leadership lease); a driver error leaves as ``StoreError``."""
        db = self._db
        try:
            if db.in_transaction:
                db.execute("ROLLBACK")
            db.execute("BEGIN")
            try:
                result = work(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._error("cannot update the leadership", exc) from exc
        return result

    def get(self, task_id: str) -> TaskRecord | None:
        pending = self._pending.get(task_id)
        if pending is not None:
            return pending  # the caller's own record, put in this batch: written as it is at commit
        if task_id in self._read:
            return self._read[task_id]
        try:
            row = self._db.execute("SELECT data FROM tasks WHERE id = ?", (task_id,)).fetchone()
        except sqlite3.Error as exc:
            raise self._error("cannot read", exc) from exc
        return TaskRecord.from_dict(json.loads(row[0])) if row else None

    def prefetch(self, task_ids: Iterable[str]) -> None:
        wanted = [i for i in dict.fromkeys(task_ids) if i not in self._pending and i not in self._read]
        try:
            self._read_many(wanted)
        except sqlite3.Error as exc:
            raise self._error("cannot read", exc) from exc

    def _read_many(self, wanted: list[str]) -> None:
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start:start + _CHUNK]
            self._read.update(dict.fromkeys(chunk))
            marks = ",".join("?" * len(chunk))
            for task_id, data in self._db.execute(f"SELECT id, data FROM tasks WHERE id IN ({marks})", chunk):
                self._read[task_id] = TaskRecord.from_dict(json.loads(data))

    def load_live(self) -> list[TaskRecord]:
        self.commit()
        rows = self._query(f"SELECT data FROM tasks WHERE state IN ({_LIVE}) ORDER BY created")
        return [TaskRecord.from_dict(json.loads(r[0])) for r in rows]

    def list_tasks(self, state: str | None = None, limit: int = 100, *, queue: str | None = None,
                   task: str | None = None, before: Key | None = None) -> list[TaskRecord]:
        self.commit()
        where, params = list_where(TaskFilter(state, queue, task, before))
        rows = self._query(f"SELECT data FROM tasks{where} ORDER BY updated DESC, id DESC LIMIT ?", (*params, limit))
        return [TaskRecord.from_dict(json.loads(r[0])) for r in rows]

    def counts(self) -> dict[str, int]:
        self.commit()
        return dict(self._query("SELECT state, COUNT(*) FROM tasks GROUP BY state"))

    def put_schedule(self, schedule: ScheduleRecord) -> None:
        self._pending_schedules[schedule.name] = schedule

    def delete_schedule(self, name: str) -> None:
        self._pending_schedules[name] = None

    def load_schedules(self) -> list[ScheduleRecord]:
        self.commit()
        rows = self._query("SELECT data FROM schedules ORDER BY name")
        return [ScheduleRecord.from_dict(json.loads(r[0])) for r in rows]

    def put_workflow(self, workflow: WorkflowRecord) -> None:
        self._pending_workflows[workflow.id] = workflow

    def get_workflow(self, workflow_id: str) -> WorkflowRecord | None:
        pending = self._pending_workflows.get(workflow_id)
        if pending is not None:
            return pending
        rows = self._query("SELECT data FROM workflows WHERE id = ?", (workflow_id,))
        return WorkflowRecord.from_dict(json.loads(rows[0][0])) if rows else None

    def list_workflows(self, state: str | None = None, limit: int = 100) -> list[WorkflowRecord]:
        self.commit()
        if state is None:
            rows = self._query("SELECT data FROM workflows ORDER BY updated DESC LIMIT ?", (limit,))
        else:
            rows = self._query("SELECT data FROM workflows WHERE state = ? ORDER BY updated DESC LIMIT ?",
                               (state, limit))
        return [WorkflowRecord.from_dict(json.loads(r[0])) for r in rows]

    def put_rate_window(self, bucket: str, window: dict[str, Any] | None) -> None:
        self._pending_windows[bucket] = window

    def load_rate_windows(self) -> dict[str, dict[str, Any]]:
        self.commit()
        return {bucket: json.loads(data) for bucket, data in self._query("SELECT bucket, data FROM rate_windows")}

    def put_rollout(self, rollout_id: str, data: dict[str, Any]) -> None:
        self._pending_rollouts[rollout_id] = data

    def load_rollouts(self) -> list[dict[str, Any]]:
        self.commit()
        return [json.loads(data) for (data,) in self._query("SELECT data FROM rollouts ORDER BY created, id")]

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._error("cannot read", exc) from exc

    def discard(self) -> None:
        """Close without committing: a coordinator that no longer leads drops what it buffered."""
        self._pending.clear()
        self._pending_schedules = {}
        self._pending_rollouts = {}
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    def close(self) -> None:
        try:
            self.commit()
        finally:
            try:
                self._db.close()
            except sqlite3.Error as exc:
                raise self._error("cannot close", exc) from exc


def _why_not(path: str) -> str:
    """What SQLite's "unable to open database file" does not say: which part of the path is wrong."""
    if path == ":memory:" or path.startswith("file:") or "://" in path:
        return ""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return " (it is a directory)"
    if not os.path.isdir(parent):
        return f" (the directory {parent} does not exist)"
    if not os.access(parent if not os.path.exists(path) else path, os.W_OK):
        return " (not writable)"
    return ""
def _migrate(db: sqlite3.Connection, data_task: str) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY)")
    applied = {row[0] for row in db.execute("SELECT name FROM schema_migrations")}
    for name, sql in MIGRATIONS:
        if name not in applied:
            db.execute("BEGIN")
            for statement in sql.replace("{data_task}", data_task).split(";"):
                db.execute(statement)
            db.execute("INSERT INTO schema_migrations (name) VALUES (?)", (name,))
            db.execute("COMMIT")


def list_where(where: TaskFilter) -> tuple[str, tuple[Any, ...]]:
    """The WHERE clause (empty, or with its leading space) and parameters of a page of the task list.
    Each filter is an equality on an indexed column that leads an index ending ``(updated, id)``, and
    the cursor a row-value range on those two, so a page is an index range read backwards from the
    cursor, ``LIMIT`` rows long (tests/test_store.py checks SQLite's plan)."""
    terms = [f"{column} = ?" for column in ("state", "queue", "task") if getattr(where, column) is not None]
    params: list[Any] = [value for value in (where.state, where.queue, where.task) if value is not None]
    if where.before is not None:
        terms.append("(updated, id) < (?, ?)")
        params.extend(where.before)
    return (" WHERE " + " AND ".join(terms) if terms else ""), tuple(params)


_DUMPS = json.JSONEncoder(separators=(",", ":"), default=str).encode


def _encode(data: Any) -> str:
    """A row's JSON: pydantic-core's encoder, 4-7x faster than the standard library's (each record
    is encoded at every commit that changes it: half the commit's time was this), else ``_DUMPS``.

    Both give compact JSON that ``json.loads`` reads back to the same values: floats round-trip
    exactly (shortest form: ``1e-7`` where Python writes ``1e-07``), non-ASCII text is written as
    UTF-8 instead of ``\\u`` escapes, NaN and the infinities as the standard library writes them.
    What pydantic-core refuses (a lone surrogate in a string, an object it does not know) goes
    through ``_DUMPS``, which writes what is not JSON as ``str()`` (never in a record: its values
    come from JSON; a type pydantic-core knows, e.g. a datetime, it writes its own way)."""
    try:
        return to_json(data).decode()
    except ValueError:  # PydanticSerializationError is one
        return _DUMPS(data)


def _row(record: TaskRecord) -> tuple[Any, ...]:
    data = _encode(record.to_stored())
    return (record.id, record.state, record.queue, record.task, record.updated, record.created, data)
