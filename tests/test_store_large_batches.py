"""Large commits (store/postgres.py ``COPY_MIN`` rows or more go by COPY into a temporary table):
the same records as a small commit on both stores, fenced like one, and a failed one retried whole.

Each test runs on an SQLite file and on a PostgreSQL database of its own (tests/postgres.py).
"""

from __future__ import annotations

import pytest

from mqtt_tasks.errors import LeadershipLostError, StoreError
from mqtt_tasks.store import SQLiteStore, TaskRecord
from mqtt_tasks.store.leadership import Lease
from mqtt_tasks.store.postgres import COPY_MIN, PostgresStore
from tests.brokers import wait_until
from tests.postgres import store_at

LARGE = COPY_MIN * 3 + 7


def put_batch(store: SQLiteStore, state: str, count: int = LARGE, tag: str = "t") -> None:
    for i in range(count):
        store.put(TaskRecord(id=f"{tag}{i:04d}", state=state, task="noop", queue="q", result={"i": i, "pct": "5%?"}))


def test_a_large_commit_writes_and_then_updates_every_record(location: str) -> None:
    a = store_at(location)
    put_batch(a, "queued")
    assert a.commit() == LARGE
    put_batch(a, "succeeded")  # the same ids: the upsert's conflict path
    assert a.commit() == LARGE
    put_batch(a, "queued", count=3, tag="small")  # a small commit takes the other path
    assert a.commit() == 3
    a.close()
    b = store_at(location)  # read back from the database, nothing buffered
    assert b.counts() == {"succeeded": LARGE, "queued": 3}
    record = b.get(f"t{LARGE - 1:04d}")
    assert record is not None and record.result == {"i": LARGE - 1, "pct": "5%?"} and record.queue == "q"
    b.close()


def test_a_deposed_leaders_large_batch_rolls_back_whole(location: str) -> None:
    a, b = store_at(location), store_at(location)
    old = Lease(a, "p", "old", 0.5)
    assert old.acquire()
    a.fence = old
    put_batch(a, "queued", tag="before")
    assert a.commit() == LARGE
    wait_until(lambda: Lease(b, "p", "new", 30).acquire(), 5, interval=0.05, message="the lease never ran out")
    put_batch(a, "succeeded", tag="before")
    put_batch(a, "queued", tag="after")
    with pytest.raises(LeadershipLostError, match="no longer leads"):
        a.commit()
    assert b.counts() == {"queued": LARGE}  # nothing of the deposed batch, staged rows included
    assert b.get("after0000") is None
    a.discard(), b.close()


def test_a_large_commit_cut_off_from_its_server_is_retried_whole_on_a_new_session() -> None:
    import psycopg

    from tests.postgres import private_database

    with private_database() as url:
        a = PostgresStore(url)
        put_batch(a, "queued", tag="first")
        assert a.commit() == LARGE  # the session's temporary table exists now
        pid = a._db.execute("SELECT pg_backend_pid()").fetchone()[0]  # noqa: SLF001
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        put_batch(a, "succeeded", tag="first")
        put_batch(a, "queued", tag="second")
        with pytest.raises(StoreError):
            a.commit()  # the dead session: nothing written, everything still buffered
        assert a.commit() == 2 * LARGE  # a new session, its own temporary table, the whole batch once
        assert a.counts() == {"succeeded": LARGE, "queued": LARGE}
        a.close()
