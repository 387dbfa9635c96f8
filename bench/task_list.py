"""The task list over a million records: how long a filtered page takes, and what its indexes cost a commit.

Builds a store of ``--rows`` records (default 1,000,000) through the store's own ``put``/``commit``:
5 queues, 20 task names, 96 % ``succeeded``, 3 % ``dead``, 1 % ``started``; records committed in
batches of 1,000 that share one ``updated`` (as a coordinator's batch can). Then, per filter, the
median milliseconds of ``list_tasks`` for the first page, a page from a cursor in the middle of the
list, and the last page (``limit`` 100, 20 rounds each), and the median milliseconds of committing
1,000 new records and of updating 1,000 existing ones, with the task list's indexes and with only
the two indexes the store had before them (``tasks_state_updated``, ``tasks_updated``).

``python -m bench.task_list [--rows 1000000] [--postgres]``; the figures are in docs/benchmarks.md.
PostgreSQL needs a server on 127.0.0.1:5432 (trust auth, user postgres; ``MQTT_TASKS_POSTGRES``
names another admin URL): a database of its own is created and dropped.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mqtt_tasks.store import SQLiteStore, TaskRecord  # noqa: E402
from mqtt_tasks.store.listing import TaskFilter, key  # noqa: E402
from mqtt_tasks.store.opening import open_store  # noqa: E402
from mqtt_tasks.store.sqlite import list_where  # noqa: E402

QUEUES = ("emails", "images", "reports", "billing", "default")
BATCH = 1000
FILTERS: tuple[dict[str, str], ...] = (
    {}, {"state": "dead"}, {"queue": "emails"}, {"task": "job7"}, {"state": "dead", "queue": "emails"},
    {"queue": "emails", "task": "job5"}, {"state": "dead", "queue": "emails", "task": "job0"},
)
OLD_INDEXES = ("CREATE INDEX tasks_state_updated ON tasks (state, updated)",
               "CREATE INDEX tasks_updated ON tasks (updated)")
NEW_INDEXES = ("tasks_updated_id", "tasks_state_updated_id", "tasks_queue_updated_id", "tasks_task_updated_id",
               "tasks_queue_state_updated_id")


def _record(i: int, updated: float) -> TaskRecord:
    state = "dead" if i % 100 < 3 else "started" if i % 100 == 3 else "succeeded"
    name = f"job{i % 20}"
    return TaskRecord(id=f"task-{i:07d}", state=state, task=name, queue=QUEUES[i % 5], created=updated,
                      updated=updated, body={"id": f"task-{i:07d}", "task": name, "args": [i]}, worker="w0",
                      attempt=1, history=[{"state": state, "attempt": 1, "worker": "w0", "ts": updated}])


def build(store: SQLiteStore, rows: int) -> None:
    for start in range(0, rows, BATCH):
        for i in range(start, min(rows, start + BATCH)):
            store.put(_record(i, 1_700_000_000.0 + start / BATCH))
        store.commit()


def median_ms(work: Callable[[], Any], rounds: int = 20) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        work()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def plan(store: SQLiteStore, where: dict[str, str]) -> str:
    """The index the database reads a page from (SQLite's EXPLAIN QUERY PLAN; PostgreSQL's EXPLAIN)."""
    clause, params = list_where(TaskFilter(**where))
    sql = f"SELECT data FROM tasks{clause} ORDER BY updated DESC, id DESC LIMIT ?"
    explain = "EXPLAIN" if "://" in store.path else "EXPLAIN QUERY PLAN"
    rows = store._query(f"{explain} {sql}", (*params, 101))  # noqa: SLF001
    return " ".join(next((w for w in str(row[-1]).split() if w.startswith("tasks_")), "") for row in rows).strip()


def pages(store: SQLiteStore) -> None:
    print(f"{'filter':45} {'first':>8} {'middle':>8} {'last':>8}  ms per page of 100, index")
    for where in FILTERS:
        every = store.list_tasks(limit=10**9, **where) if where else None
        middle = key(every[len(every) // 2]) if every else (1_700_000_500.0, "task-0500000")
        last = key(every[-50]) if every and len(every) > 50 else middle
        first_ms = median_ms(lambda w=where: store.list_tasks(limit=101, **w))  # type: ignore[misc]
        mid_ms = median_ms(lambda w=where, b=middle: store.list_tasks(limit=101, before=b, **w))  # type: ignore[misc]
        last_ms = median_ms(lambda w=where, b=last: store.list_tasks(limit=101, before=b, **w))  # type: ignore[misc]
        print(f"{str(where or 'none'):45} {first_ms:8.2f} {mid_ms:8.2f} {last_ms:8.2f}  {plan(store, where)}")


def commits(store: SQLiteStore, rows: int, label: str) -> None:
    fresh = iter(range(rows + 10**6, rows + 2 * 10**6))
    now = time.time()

    def insert() -> None:
        for _ in range(BATCH):
            store.put(_record(next(fresh), now))
        store.commit()

    def update() -> None:
        for r in store.list_tasks(limit=BATCH, state="succeeded"):
            r.updated += 0.001
            store.put(r)
        store.commit()

    print(f"commit of {BATCH} records, {label}: insert {median_ms(insert, 10):.1f} ms, "
          f"update {median_ms(update, 10):.1f} ms")


@contextlib.contextmanager
def location(postgres: bool) -> Iterator[str]:
    if postgres:
        from tests.postgres import private_database

        with private_database() as url:
            yield url
        return
    with tempfile.TemporaryDirectory(prefix="bench-list-") as tmp:
        yield str(Path(tmp) / "tasks.db")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--pages-of", metavar="PATH", help="only time the pages of an SQLite file built before")
    args = parser.parse_args()
    if args.pages_of:
        with SQLiteStore(args.pages_of) as store:
            pages(store)
        return
    with location(args.postgres) as where:
        store = open_store(where)
        assert isinstance(store, SQLiteStore)
        t0 = time.perf_counter()
        build(store, args.rows)
        print(f"{args.rows:,} records written in {time.perf_counter() - t0:.0f} s ({where.split('://')[0]})")
        pages(store)
        if args.postgres:  # its planner judges a filter by the table's statistics: as autovacuum leaves them
            store._db.execute("ANALYZE tasks")  # noqa: SLF001
            print("after ANALYZE tasks:")
            pages(store)
        commits(store, args.rows, "the task list's 4 indexes")
        for name in NEW_INDEXES:
            store._db.execute(f"DROP INDEX {name}")  # noqa: SLF001
        for sql in OLD_INDEXES:
            store._db.execute(sql)  # noqa: SLF001
        commits(store, args.rows, "the 2 indexes from before")
        store.close()


if __name__ == "__main__":
    main()
