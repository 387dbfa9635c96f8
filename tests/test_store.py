"""One contract suite for every store implementation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mqtt_tasks.store import MemoryStore, ScheduleRecord, SQLiteStore, Store, TaskRecord
from mqtt_tasks.store.opening import open_store
from mqtt_tasks.store.sqlite import MIGRATIONS
from mqtt_tasks.store.workflows import WorkflowRecord, WorkflowStep


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "postgres":
        from tests.postgres import private_database

        with private_database() as url:
            s: Store = open_store(url)
            yield s
            s.close()
        return
    s = MemoryStore() if request.param == "memory" else SQLiteStore(str(tmp_path / "t.db"))
    yield s
    s.close()


def rec(task_id: str, state: str = "queued", updated: float = 1.0, **kw: object) -> TaskRecord:
    return TaskRecord(id=task_id, state=state, created=updated, updated=updated, **kw)  # type: ignore[arg-type]


def test_put_is_visible_before_and_after_commit(store: Store) -> None:
    store.put(rec("a", body={"id": "a", "task": "t"}))
    assert store.get("a") is not None
    assert store.commit() == 1
    got = store.get("a")
    assert got is not None and got.body == {"id": "a", "task": "t"}
    assert store.get("missing") is None


def test_latest_put_wins_and_roundtrips_every_field(store: Store) -> None:
    r = rec("a", attempt=2, failures=1, result={"x": [1, 2]}, history=[{"attempt": 1, "event": "failed"}])
    store.put(r)
    r.state = "succeeded"
    r.winner = {"attempt": 2, "worker": "w"}
    store.commit()
    got = store.get("a")
    assert got == r


def test_load_live_returns_only_live_records_oldest_first(store: Store) -> None:
    store.put(rec("b", "started", updated=2))
    store.put(rec("a", "backlog", updated=1))
    store.put(rec("c", "succeeded", updated=3))
    store.put(rec("d", "dead", updated=4))
    store.commit()
    assert [r.id for r in store.load_live()] == ["a", "b"]


def test_list_and_counts(store: Store) -> None:
    for i in range(5):
        store.put(rec(f"t{i}", "succeeded" if i % 2 else "queued", updated=i))
    assert [r.id for r in store.list_tasks()] == ["t4", "t3", "t2", "t1", "t0"]
    assert [r.id for r in store.list_tasks("succeeded", limit=1)] == ["t3"]
    assert store.counts() == {"succeeded": 2, "queued": 3}


def test_a_record_leaving_the_terminal_window_is_not_live(store: Store) -> None:
    r = rec("a", "started")
    store.put(r)
    store.commit()
    r.state = "succeeded"
    store.put(r)
    store.commit()
    assert store.load_live() == []
    assert store.counts() == {"succeeded": 1}


def test_sqlite_survives_reopen_and_uncommitted_puts_are_lost(tmp_path: Path) -> None:
    path = str(tmp_path / "t.db")
    s = SQLiteStore(path)
    s.put(rec("kept"))
    s.commit()
    s.put(rec("lost"))
    s._db.close()  # a crash: no commit  # noqa: SLF001
    s2 = SQLiteStore(path)
    assert [r.id for r in s2.load_live()] == ["kept"]
    s2.close()


def test_memory_store_forgets_old_finished_records() -> None:
    s = MemoryStore(max_finished=3)
    for i in range(10):
        s.put(rec(f"t{i}", "succeeded", updated=i))
    s.commit()
    assert s.get("t0") is None and s.get("t9") is not None
    assert sum(s.counts().values()) == 3


def test_prefetch_is_only_a_hint_gets_see_the_same_records(store: Store) -> None:
    store.put(rec("a", "succeeded", result=1))
    store.commit()
    store.prefetch(["a", "missing", "b", "a"])
    got = store.get("a")
    assert got is not None and got.state == "succeeded" and got.result == 1
    assert store.get("missing") is None
    store.put(rec("b", "queued"))  # a put after the prefetch wins over what it read
    assert (b := store.get("b")) is not None and b.state == "queued"
    got.duplicates = 1
    store.put(got)
    store.commit()
    assert (again := store.get("a")) is not None and again.duplicates == 1


@pytest.mark.parametrize("kind", ["missing directory", "a directory", "not a database"])
def test_sqlite_errors_leave_the_store_as_store_error_naming_the_path(tmp_path: Path, kind: str) -> None:
    import sqlite3

    from mqtt_tasks.errors import MqttTasksError, StoreError

    path = {"missing directory": tmp_path / "no" / "such" / "t.db", "a directory": tmp_path,
            "not a database": tmp_path / "junk.db"}[kind]
    if kind == "not a database":
        path.write_bytes(b"this is not an SQLite file, " * 100)
    with pytest.raises(StoreError) as info:
        SQLiteStore(str(path))
    assert isinstance(info.value, MqttTasksError) and info.value.path == str(path) and str(path) in str(info.value)
    assert isinstance(info.value.__cause__, sqlite3.Error)


def test_a_failed_commit_is_a_store_error_and_keeps_the_batch(tmp_path: Path) -> None:
    from mqtt_tasks.errors import StoreError

    s = SQLiteStore(str(tmp_path / "t.db"))
    s.put(rec("a"))
    s._db.close()  # the database goes away under the store  # noqa: SLF001
    with pytest.raises(StoreError, match="cannot commit"):
        s.commit()
    assert s.get("a") is not None  # still buffered: nothing was written


# -- schedules (docs/scheduling.md) -----------------------------------------------------------
def _schedule(name: str, **kw: object) -> ScheduleRecord:
    return ScheduleRecord(name=name, task="work", **{"every": 5, **kw})  # type: ignore[arg-type]


def test_schedules_are_buffered_committed_and_removed(store: Store) -> None:
    s = _schedule("b", args=[1, {"x": 2}], last_fire=10.0, active=["b:x"], buffered=15.0)
    store.put_schedule(s)
    store.put_schedule(_schedule("a", cron="*/5 * * * *", every=None, timezone="Europe/Berlin"))
    store.commit()
    assert [x.name for x in store.load_schedules()] == ["a", "b"]
    assert store.load_schedules()[1] == s
    s.last_fire = 20.0
    store.put_schedule(s)  # written as it is at commit
    store.delete_schedule("a")
    store.commit()
    assert [(x.name, x.last_fire) for x in store.load_schedules()] == [("b", 20.0)]


def test_a_schedule_and_its_fire_commit_together(store: Store) -> None:
    s = _schedule("s", last_fire=5.0)
    store.put_schedule(s)
    store.put(rec("s:1970-01-01T00:00:05Z"))
    assert store.commit() == 2
    assert store.get("s:1970-01-01T00:00:05Z") is not None and store.load_schedules()[0].last_fire == 5.0


def test_an_old_sqlite_file_is_migrated_and_keeps_its_tasks(tmp_path: Path) -> None:
    """A file written before schedules existed (the tasks table only) opens, gains the schedules
    table, keeps its records; opening it again applies nothing twice."""
    import sqlite3

    path = str(tmp_path / "old.db")
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE tasks (id TEXT PRIMARY KEY, state TEXT NOT NULL, queue TEXT, updated REAL NOT NULL,
                            created REAL NOT NULL, data TEXT NOT NULL);
        INSERT INTO tasks VALUES ('old', 'queued', 'default', 1.0, 1.0,
                                  '{"id": "old", "state": "queued", "created": 1.0, "updated": 1.0}');
    """)
    db.commit()
    db.close()
    with SQLiteStore(path) as s:
        assert [r.id for r in s.load_live()] == ["old"]
        assert s.load_schedules() == []
        s.put_schedule(_schedule("kept"))
    with SQLiteStore(path) as s:
        assert [x.name for x in s.load_schedules()] == ["kept"]
    names = [row[0] for row in sqlite3.connect(path).execute("SELECT name FROM schema_migrations")]
    assert names == [name for name, _sql in MIGRATIONS]


def test_workflows_are_buffered_committed_and_listed(store: Store) -> None:
    """A workflow put is visible at once, durable after the commit, in the same transaction as its
    steps' task records, and its steps round-trip."""
    flow = WorkflowRecord(id="wf", kind="saga", created=1.0, updated=2.0,
                          steps=[WorkflowStep(id="wf.0", sig={"task": "charge", "args": [1]}, state="succeeded",
                                              result={"charge": 7}, undo={"task": "refund"}, undo_id="wf.0.undo")])
    store.put_workflow(flow)
    store.put(rec("wf.0", "backlog"))
    got = store.get_workflow("wf")
    assert got is not None and got.steps[0].undo_id == "wf.0.undo"
    assert store.commit() == 2
    got = store.get_workflow("wf")
    assert got is not None and got.to_dict() == flow.to_dict()
    assert store.get_workflow("nope") is None
    flow.state = "compensated"
    flow.updated = 3.0
    store.put_workflow(flow)
    store.put_workflow(WorkflowRecord(id="other", kind="chain", updated=1.0,
                                      callback=WorkflowStep(id="other.callback", sig={"task": "t"})))
    assert [w.id for w in store.list_workflows()] == ["wf", "other"]
    assert [w.id for w in store.list_workflows("compensated")] == ["wf"]
    other = store.get_workflow("other")
    assert other is not None and other.callback is not None and other.callback.sig == {"task": "t"}
    nested = WorkflowRecord(id="n", kind="chain", steps=[WorkflowStep(
        id="n.0", sig={}, kind="chord", state="running",
        steps=[WorkflowStep(id="n.0.0", sig={"task": "a"}, state="succeeded", result=[1])],
        callback=WorkflowStep(id="n.0.callback", sig={"task": "t"}))])
    store.put_workflow(nested)
    store.commit()
    got = store.get_workflow("n")
    assert got is not None and got == nested and got.steps[0].steps[0].result == [1]
    assert [s.id for s in got.walk()] == ["n.0", "n.0.0", "n.0.callback"]


def test_sqlite_workflows_survive_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "wf.db")
    with SQLiteStore(path) as s:
        s.put_workflow(WorkflowRecord(id="wf", kind="chain", steps=[WorkflowStep(id="wf.0", sig={"task": "a"})]))
    with SQLiteStore(path) as s:
        got = s.get_workflow("wf")
        assert got is not None and got.steps[0].sig == {"task": "a"} and got.state == "running"


def test_rate_windows_are_buffered_committed_and_forgotten(store: Store) -> None:
    store.put_rate_window("send|dev-1", {"period": 1.0, "times": [1.0, 2.0]})
    assert store.load_rate_windows() == {"send|dev-1": {"period": 1.0, "times": [1.0, 2.0]}}  # commits first
    store.put_rate_window("send|dev-1", {"period": 1.0, "times": [2.0, 3.0]})
    store.put_rate_window("send|", {"period": 60.0, "times": [3.0]})
    store.put(rec("t1"))
    assert store.commit() == 3
    assert store.load_rate_windows() == {"send|dev-1": {"period": 1.0, "times": [2.0, 3.0]},
                                         "send|": {"period": 60.0, "times": [3.0]}}
    store.put_rate_window("send|dev-1", None)
    store.commit()
    assert list(store.load_rate_windows()) == ["send|"]


def test_sqlite_rate_windows_survive_reopen_uncommitted_ones_do_not(tmp_path: Path) -> None:
    path = str(tmp_path / "w.db")
    with SQLiteStore(path) as s:
        s.put_rate_window("a|", {"period": 1.0, "times": [5.0]})
    s2 = SQLiteStore(path)
    s2.put_rate_window("b|", {"period": 1.0, "times": [6.0]})  # never committed: the process "dies"
    s2._db.close()
    with SQLiteStore(path) as s3:
        assert s3.load_rate_windows() == {"a|": {"period": 1.0, "times": [5.0]}}


def test_rollouts_are_buffered_committed_and_replaced(store: Store) -> None:
    store.put_rollout("r2", {"id": "r2", "created": 2.0, "state": "running"})
    store.put_rollout("r1", {"id": "r1", "created": 1.0, "state": "running"})
    store.put(rec("t1"))
    assert store.commit() == 3
    store.put_rollout("r2", {"id": "r2", "created": 2.0, "state": "aborted", "workers": {"w": {"state": "failed"}}})
    assert store.load_rollouts() == [{"id": "r1", "created": 1.0, "state": "running"},  # oldest first; commits
                                     {"id": "r2", "created": 2.0, "state": "aborted",
                                      "workers": {"w": {"state": "failed"}}}]


def test_sqlite_rollouts_survive_reopen_uncommitted_ones_do_not(tmp_path: Path) -> None:
    path = str(tmp_path / "r.db")
    with SQLiteStore(path) as s:
        s.put_rollout("r1", {"id": "r1", "created": 1.0})
    s2 = SQLiteStore(path)
    s2.put_rollout("r2", {"id": "r2", "created": 2.0})  # never committed: the process "dies"
    s2._db.close()
    with SQLiteStore(path) as s3:
        assert [r["id"] for r in s3.load_rollouts()] == ["r1"]
    assert "0003-rollouts" in dict(MIGRATIONS)


def test_a_stored_row_leaves_out_none_fields_and_reads_back_the_same() -> None:
    bare = TaskRecord("t1")
    assert "rate_limit" not in bare.to_stored() and "worker" not in bare.to_stored()
    assert TaskRecord.from_dict(bare.to_stored()) == bare
    full = TaskRecord("t2", worker="w", rate_limit="1/s", rate_key="k", result=None, body={"a": None})
    assert TaskRecord.from_dict(full.to_stored()) == full


AWKWARD = {"text": "é ✓ \x00 \"q\" \\", "lone": "\ud800", "tiny": 1e-7, "huge": 1e300, "big": 2**70,
           "neg": -0.0, "list": [None, True, 1.5], "nested": {"1": {"x": None}}}


def test_awkward_values_round_trip(store: Store) -> None:
    """Text beyond ASCII, a lone surrogate (pydantic-core refuses it: the standard encoder writes
    it), floats in exponent form, an int beyond 64 bits, None inside values: all read back equal."""
    r = rec("a", "succeeded", result=AWKWARD, body={"id": "a", "task": "é"},
            history=[{"attempt": 1, "ts": 1796547391.4503279}])
    plain = rec("b", "succeeded", result={k: v for k, v in AWKWARD.items() if k != "lone"})
    store.put(r)
    store.put(plain)
    store.commit()
    assert store.get("a") == r and store.get("b") == plain
    assert [x.id for x in store.list_tasks("succeeded")] == ["b", "a"]


def test_rows_written_by_the_standard_encoder_load_the_same(tmp_path: Path) -> None:
    """Rows from before the store encoded with pydantic-core (the standard library's compact JSON,
    ASCII escapes, ``1e-07``) read back to the same records as rows written now, and a record
    rewritten now reads back the same."""
    import json
    import sqlite3

    old_encoder = json.JSONEncoder(separators=(",", ":"), default=str).encode
    records = [rec("old", "started", result=AWKWARD, body={"id": "old", "task": "é", "args": [1e-7]},
                   history=[{"attempt": 1, "event": "started", "ts": 1796547391.4503279}]),
               rec("done", "succeeded", updated=2.0, result=None, winner={"attempt": 1, "worker": "w"})]
    path = str(tmp_path / "t.db")
    SQLiteStore(path).close()
    db = sqlite3.connect(path)
    db.executemany("INSERT INTO tasks (id, state, queue, task, updated, created, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   [(r.id, r.state, r.queue, r.task, r.updated, r.created, old_encoder(r.to_stored()))
                    for r in records])
    db.commit()
    db.close()
    with SQLiteStore(path) as s:
        assert [s.get(r.id) for r in records] == records
        assert s.load_live() == records[:1]
        again = s.get("old")
        assert again is not None
        again.state = "succeeded"
        s.put(again)
    with SQLiteStore(path) as s:
        assert s.get("old") == again and s.counts() == {"succeeded": 2}
