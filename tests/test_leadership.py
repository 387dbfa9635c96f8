"""The leadership lease (store/leadership.py) on both database stores: one leader, fenced commits.

Each test runs against an SQLite file and a PostgreSQL database of its own; two ``Store`` objects
on one database stand for two coordinators. The lease's local clock is a fake one where a test
needs to move it; the database's clock is real (the ``ttl`` is short where one must run out).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mqtt_tasks.errors import ConfigError, LeadershipLostError, StoreError
from mqtt_tasks.store import SQLiteStore, TaskRecord
from mqtt_tasks.store.leadership import MARGIN, Lease
from mqtt_tasks.store.opening import open_store
from mqtt_tasks.store.postgres import translate
from tests.brokers import wait_until


@pytest.fixture(params=["sqlite", "postgres"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "lead.db")
        return
    from tests.postgres import private_database

    with private_database() as url:
        yield url


def store_at(location: str) -> SQLiteStore:
    store = open_store(location)
    assert isinstance(store, SQLiteStore)
    return store


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_leads_and_a_second_waits_until_the_lease_is_released(location: str) -> None:
    a, b = store_at(location), store_at(location)
    first, second = Lease(a, "p", "one", 30), Lease(b, "p", "two", 30)
    assert first.acquire() and first.epoch == 1 and first.valid()
    assert not second.acquire() and second.epoch is None
    with pytest.raises(ConfigError, match="one database per prefix"):  # the records carry no prefix
        Lease(b, "other-prefix", "two", 30).acquire()
    first.release()
    assert not first.valid()
    assert second.acquire() and second.epoch == 2
    assert second.current() is not None and second.current()[:2] == ("two", 2)  # type: ignore[index]
    a.close(), b.close()


def test_a_deposed_leaders_batch_rolls_back_whole(location: str) -> None:
    a, b = store_at(location), store_at(location)
    old = Lease(a, "p", "old", 0.5)
    assert old.acquire()
    a.fence = old
    a.put(TaskRecord(id="before"))
    assert a.commit() == 1
    wait_until(lambda: Lease(b, "p", "new", 30).acquire(), 5, interval=0.05, message="the lease never ran out")
    a.put(TaskRecord(id="after"))
    with pytest.raises(LeadershipLostError, match="no longer leads"):
        a.commit()
    assert not old.valid()
    assert b.get("before") is not None and b.get("after") is None  # nothing of the deposed batch
    assert a.get("after") is not None  # still buffered: the caller decides (the coordinator discards it)
    a.discard(), b.close()


def test_an_idle_leader_renews_through_empty_commits(location: str) -> None:
    clock = Clock()
    a = store_at(location)
    lease = Lease(a, "p", "one", 3, monotonic=clock)
    assert lease.acquire()
    a.fence = lease
    clock.now += 0.5
    assert not lease.due()
    clock.now += 1.0  # a third of the ttl went by: an empty commit writes the renewal
    assert lease.due()
    assert a.commit() == 0
    assert not lease.due()
    assert lease.valid()
    clock.now += 3 * (1 - MARGIN) + 0.01  # no renewal since: it stops acting before the database's lease ends
    assert not lease.valid()
    a.close()


def test_a_leader_stops_acting_a_margin_before_its_lease_ends(location: str) -> None:
    clock = Clock()
    a = store_at(location)
    lease = Lease(a, "p", "one", 10, monotonic=clock)
    assert lease.acquire()
    clock.now += 10 * (1 - MARGIN) - 0.01
    assert lease.valid()
    clock.now += 0.02
    assert not lease.valid()
    a.close()


def test_racing_standbys_elect_exactly_one(location: str) -> None:
    stores = [store_at(location) for _ in range(6)]
    leases = [Lease(s, "p", f"c{i}", 30) for i, s in enumerate(stores)]
    barrier = threading.Barrier(len(leases))
    won: list[str] = []

    def race(lease: Lease) -> None:
        barrier.wait()
        for _ in range(20):  # SQLite may answer "locked" to some; they try again, as standbys do
            try:
                if lease.acquire():
                    won.append(lease.holder)
                return
            except StoreError:
                continue

    threads = [threading.Thread(target=race, args=(lease,)) for lease in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(won) == 1, won
    for s in stores:
        s.close()


def test_sql_of_the_common_dialect_reads_as_postgresql() -> None:
    assert translate("SELECT data FROM tasks WHERE id = ? AND note LIKE '5%'") == \
        "SELECT data FROM tasks WHERE id = %s AND note LIKE '5%%'"
    assert translate("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL, n INTEGER, b BLOB)") == (
        "CREATE TABLE t (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, at DOUBLE PRECISION, n BIGINT, "
        "b BYTEA)")
    assert translate("UPDATE t SET realm = ?") == "UPDATE t SET realm = %s"  # types only in DDL, whole words


def test_postgres_rides_out_a_dropped_connection(postgres_url: str) -> None:
    import psycopg

    store = store_at(postgres_url)
    store.put(TaskRecord(id="a"))
    store.commit()
    pid = store._db.execute("SELECT pg_backend_pid()").fetchone()[0]  # noqa: SLF001
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))  # the server restarts, or a pooler drops us
    store.put(TaskRecord(id="b"))
    with pytest.raises(StoreError, match="cannot commit"):
        store.commit()
    assert store.get("b") is not None  # kept for the retry
    assert store.commit() == 1  # a new connection
    assert {r.id for r in store.list_tasks()} == {"a", "b"}
    store.close()


def test_postgres_ends_a_stuck_leaders_session_only_once_its_lease_ran_out(postgres_url: str) -> None:
    a, b = store_at(postgres_url), store_at(postgres_url)
    stuck, standby = Lease(a, "p", "stuck", 0.5), Lease(b, "p", "standby", 30)
    assert stuck.acquire()
    a._db.execute("BEGIN")  # noqa: SLF001 - a commit cut off after its fence: the row stays locked,
    stuck.check(a._db)  # noqa: SLF001
    errors: list[Exception] = []

    def hang() -> None:  # ... and its server process busy (as one blocked writing to a silent socket)
        try:
            a._db.execute("SELECT pg_sleep(60)")  # noqa: SLF001
        except StoreError as exc:
            errors.append(exc)
        except Exception as exc:  # noqa: BLE001 - the driver's error, as the shim raises it
            errors.append(exc)

    hanging = threading.Thread(target=hang)
    hanging.start()
    with pytest.raises(StoreError, match="lock timeout"):
        standby.acquire()
    wait_until(lambda: standby.unstick() == 1, 10, interval=0.2, message="the stuck session was never ended")
    hanging.join(10)
    assert errors, "the stuck session's statement went on"
    assert standby.acquire() and standby.epoch == 2
    a.discard(), b.close()


@pytest.mark.parametrize("db", ["postgresql://postgres:secret@127.0.0.1:1/nothing",
                                "postgresql://postgres@127.0.0.1/no_such_database_here"])
def test_a_bad_postgres_location_is_one_line_and_a_failure_exit(db: str) -> None:
    from click.testing import CliRunner

    from mqtt_tasks.cli import cli

    result = CliRunner().invoke(cli, ["coordinator", "--db", db, "--broker", "mqtt://127.0.0.1:1", "--log-level",
                                      "error"], prog_name="mqtt-tasks")
    assert result.exit_code != 0 and result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot open" in lines[0] and "Traceback" not in result.output, result.output
    assert "secret" not in result.output


def test_a_group_on_a_database_of_another_prefix_is_one_line_and_a_failure_exit(postgres_url: str) -> None:
    from click.testing import CliRunner

    from mqtt_tasks.cli import cli

    store = store_at(postgres_url)
    assert Lease(store, "first", "c1", 30).acquire()
    store.close()
    result = CliRunner().invoke(cli, ["coordinator", "--db", postgres_url, "--prefix", "second", "--broker",
                                      "mqtt://127.0.0.1:1", "--log-level", "error"], prog_name="mqtt-tasks")
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1 and "one database per prefix" in lines[0], result.output
