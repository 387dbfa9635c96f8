"""The task list's contract on every store (memory, SQLite, PostgreSQL): filters by state, queue and
task name, keyset pages across ties on ``updated``, the ``task`` column migration, and SQLite's plan
(an index range, never a scan or a sort of the table)."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mqtt_tasks.store import SQLiteStore, Store, TaskRecord
from mqtt_tasks.store.listing import TaskFilter, decode_cursor, key, page, parse_query, select
from mqtt_tasks.store.sqlite import MIGRATIONS, list_where
from tests.test_store import rec, store  # noqa: F401  (a fixture: memory, sqlite, postgres)

QUEUES = ("emails", "images")
NAMES = ("send", "resize", "report")
STATES = ("succeeded", "dead", "started")


def _fill(s: Store, n: int = 60) -> list[TaskRecord]:
    """``n`` records over 2 queues, 3 task names and 3 states; ``updated`` repeats in runs of 4."""
    records = [rec(f"t{i:03d}", STATES[i % 3], updated=100.0 + i // 4, queue=QUEUES[i % 2], task=NAMES[i % 5 % 3])
               for i in range(n)]
    for r in records:
        s.put(r)
    s.commit()
    return records


def _expected(records: list[TaskRecord], **where: Any) -> list[str]:
    return [r.id for r in select(records, TaskFilter(**where), 10_000)]


def _all_pages(s: Store, limit: int, **where: Any) -> list[list[str]]:
    pages, before = [], None
    while True:
        got, cursor = page(s.list_tasks(limit=limit + 1, before=before, **where), limit)
        pages.append([r.id for r in got])
        if cursor is None:
            return pages
        before = decode_cursor(cursor)


def test_the_list_order_is_updated_then_id_newest_first(store: Store) -> None:  # noqa: F811
    records = _fill(store, 12)
    ids = [r.id for r in store.list_tasks(limit=100)]
    assert ids == [r.id for r in sorted(records, key=key, reverse=True)]
    assert ids[:4] == ["t011", "t010", "t009", "t008"]  # one tie on updated, by id


@pytest.mark.parametrize("where", [
    {"state": "dead"}, {"queue": "emails"}, {"task": "resize"}, {"state": "succeeded", "queue": "images"},
    {"queue": "emails", "task": "report"}, {"state": "started", "queue": "emails", "task": "send"},
    {"task": "nosuchtask"},
])
def test_each_filter_and_their_combinations(store: Store, where: dict[str, str]) -> None:  # noqa: F811
    records = _fill(store)
    expected = _expected(records, **where)
    assert store.list_tasks(limit=1000, **where) == [r for r in select(records, TaskFilter(**where), 1000)]
    assert [r.id for r in store.list_tasks(limit=3, **where)] == expected[:3]
    if where != {"task": "nosuchtask"}:
        assert expected, "the case filters something"


@pytest.mark.parametrize("limit", [1, 3, 4, 7])
def test_pages_cover_every_record_once_across_ties(store: Store, limit: int) -> None:  # noqa: F811
    records = _fill(store, 30)
    pages = _all_pages(store, limit)
    seen = list(itertools.chain.from_iterable(pages))
    assert seen == _expected(records)  # in order, each once
    assert all(len(p) == limit for p in pages[:-1]) and 0 < len(pages[-1]) <= limit
    filtered = list(itertools.chain.from_iterable(_all_pages(store, limit, queue="images", state="dead")))
    assert filtered == _expected(records, queue="images", state="dead")


def test_records_added_while_paging_neither_shift_nor_repeat_the_rest(store: Store) -> None:  # noqa: F811
    records = _fill(store, 20)
    first, cursor = page(store.list_tasks(limit=6), 5)
    assert cursor is not None
    for i in range(10):  # newer records, some tied with the newest
        store.put(rec(f"n{i}", "succeeded", updated=104.0 + i // 3, queue="emails", task="send"))
    store.commit()
    rest = [r.id for r in store.list_tasks(limit=100, before=decode_cursor(cursor))]
    assert [r.id for r in first] + rest == _expected(records)


def test_a_task_name_learnt_later_is_found_by_it(store: Store) -> None:  # noqa: F811
    r = rec("late", "started", updated=5.0)  # first seen through a status event: no name yet
    store.put(r)
    store.commit()
    assert store.list_tasks(task="send") == []
    r.task, r.queue, r.updated = "send", "emails", 6.0
    store.put(r)
    store.commit()
    assert [x.id for x in store.list_tasks(task="send", queue="emails")] == ["late"]


def _downgrade(s: SQLiteStore) -> None:
    """Make the store's database look like one written before migration 0004: no ``task`` column,
    the two old indexes, 0004 not recorded."""
    db = s._db  # noqa: SLF001
    for statement in ("DROP INDEX tasks_updated_id", "DROP INDEX tasks_state_updated_id",
                      "DROP INDEX tasks_queue_updated_id", "DROP INDEX tasks_task_updated_id",
                      "DROP INDEX tasks_queue_state_updated_id",
                      "ALTER TABLE tasks DROP COLUMN task",
                      "CREATE INDEX tasks_state_updated ON tasks (state, updated)",
                      "CREATE INDEX tasks_updated ON tasks (updated)",
                      "DELETE FROM schema_migrations WHERE name = '0004-task-list'"):
        db.execute(statement)


@pytest.fixture(params=["sqlite", "postgres"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "postgres":
        from tests.postgres import private_database

        with private_database() as url:
            yield url
        return
    yield str(tmp_path / "old.db")


def test_a_store_from_before_the_task_column_gets_it_filled(location: str) -> None:
    from tests.postgres import store_at

    s = store_at(location)
    _downgrade(s)
    old = [("a", "succeeded", "emails", 1.0, '{"id":"a","state":"succeeded","task":"send","queue":"emails"}'),
           ("b", "dead", "images", 2.0, '{"id":"b","state":"dead","task":"resize","queue":"images"}'),
           ("c", "started", "emails", 3.0, '{"id":"c","state":"started","queue":"emails"}')]  # no name yet
    for row in old:
        s._db.execute("INSERT INTO tasks (id, state, queue, updated, created, data) VALUES (?, ?, ?, ?, ?, ?)",  # noqa: SLF001
                      (*row[:4], row[3], row[4]))
    s.discard()
    with store_at(location) as s2:
        assert [r.id for r in s2.list_tasks(task="send")] == ["a"]
        assert [r.id for r in s2.list_tasks(task="resize", state="dead")] == ["b"]
        assert [r.id for r in s2.list_tasks()] == ["c", "b", "a"]
        named = dict(s2._query("SELECT id, task FROM tasks"))  # noqa: SLF001
        assert named == {"a": "send", "b": "resize", "c": None}
        applied = [row[0] for row in s2._query("SELECT name FROM schema_migrations")]  # noqa: SLF001
        assert sorted(applied) == sorted(name for name, _sql in MIGRATIONS)


@pytest.mark.parametrize(("where", "index"), [
    ({}, "tasks_updated_id"), ({"state": "dead"}, "tasks_state_updated_id"),
    ({"queue": "emails"}, "tasks_queue_updated_id"), ({"task": "send"}, "tasks_task_updated_id"),
    ({"state": "dead", "queue": "emails"}, "tasks_queue_state_updated_id"),
    ({"state": "dead", "queue": "emails", "task": "send"}, "tasks_queue_state_updated_id"),
    ({"queue": "emails", "task": "send"}, "tasks_"),
])
@pytest.mark.parametrize("before", [None, (5.0, "t1")])
def test_sqlite_reads_a_page_from_an_index_without_sorting(tmp_path: Path, where: dict[str, str], index: str,
                                                           before: tuple[float, str] | None) -> None:
    with SQLiteStore(str(tmp_path / "t.db")) as s:
        clause, params = list_where(TaskFilter(**where, before=before))
        plan = " | ".join(row[-1] for row in s._query(  # noqa: SLF001
            f"EXPLAIN QUERY PLAN SELECT data FROM tasks{clause} ORDER BY updated DESC, id DESC LIMIT ?",
            (*params, 10)))
    assert f"USING INDEX {index}" in plan and "TEMP B-TREE" not in plan, plan


def test_the_tasks_query_is_parsed_with_clear_errors() -> None:
    query = parse_query({"state": "dead", "queue": "emails", "task": "send", "limit": 5000})
    assert (query.filter.state, query.filter.queue, query.filter.task, query.limit) == ("dead", "emails", "send", 1000)
    assert parse_query({}).limit == 100 and parse_query({}).filter == TaskFilter()
    for request, error in [({"state": "bogus"}, "state: one of"), ({"queue": "a/b"}, "invalid queue"),
                           ({"queue": 3}, "invalid queue"), ({"task": ""}, "task: a task name"),
                           ({"limit": "10"}, "limit: an integer"), ({"limit": 0}, "limit: an integer"),
                           ({"limit": True}, "limit: an integer"), ({"before": "???"}, "before: not a cursor"),
                           ({"before": 17}, "before: not a cursor"), ({"before": "WzEsMl0"}, "before: not a cursor")]:
        with pytest.raises(ValueError, match=error):
            parse_query(request)


def test_a_cursor_round_trips_the_exact_key() -> None:
    r = TaskRecord("job-1:x", updated=1_765_000_000.123456789)
    got, cursor = page([r, TaskRecord("z")], 1)
    assert got == [r] and cursor is not None and decode_cursor(cursor) == (r.updated, r.id)
    assert page([r], 1) == ([r], None)


def test_an_old_sqlite_file_has_the_old_indexes_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "t.db")
    old = SQLiteStore(path)
    _downgrade(old)
    old.discard()
    SQLiteStore(path).close()
    names = {row[0] for row in sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                                                             "AND tbl_name = 'tasks' AND sql IS NOT NULL")}
    assert names == {"tasks_updated_id", "tasks_state_updated_id", "tasks_queue_updated_id", "tasks_task_updated_id",
                     "tasks_queue_state_updated_id"}
