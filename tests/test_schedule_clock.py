"""Periodic tasks against a real coordinator whose clock is moved: catch-up ``last`` after a long
downtime, and a cron schedule in a time zone through the spring-forward and fall-back changes.

Each coordinator runs in this process with an injected wall clock (``Coordinator(clock=...)``,
the clock by which it fires schedules and judges everything else) that runs at real speed from
a chosen instant, against a real broker (both kinds) and a real worker; the store is an SQLite
file shared by the coordinators that follow each other on it. So "five minutes down" or "the
night of a DST change" take a few real seconds, and nothing in the coordinator is mocked.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from pathlib import Path

from mqtt_tasks.coordinator import query_status
from mqtt_tasks.schedules import list_schedules, put_schedule
from mqtt_tasks.store import SQLiteStore, TaskRecord
from tests.brokers import wait_until
from tests.coord_helpers import coordinator, executions, settings, worker
from tests.test_schedules import fire_time


def clock_from(instant: float) -> Callable[[], float]:
    """A wall clock that reads ``instant`` now and runs at real speed from there."""
    offset = instant - time.time()
    return lambda: time.time() + offset


def utc(text: str) -> float:
    return datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.timezone.utc).timestamp()


def ran(log: str, name: str) -> int:
    """How many runs of the schedule's task ended, by the task bodies' log (not the coordinator's store,
    which belongs to the coordinator's thread while it runs)."""
    return sum(1 for kind, _pid in executions(log).get(name, []) if kind == "end")


def stored_fires(db: str, name: str) -> list[TaskRecord]:
    """The schedule's fires in the store, read once its coordinator has stopped."""
    with SQLiteStore(db) as store:
        return sorted((r for r in store.list_tasks(limit=10_000) if r.id.startswith(name + ":")), key=fire_time)


def test_catchup_last_after_downtime_runs_only_the_latest_missed_fire(broker_url: str, prefix: str,
                                                                       tmp_path: Path) -> None:
    db, log = str(tmp_path / "c.db"), str(tmp_path / "log")
    s = settings(broker_url, prefix)
    minute = 60 * (int(time.time()) // 60 + 10)  # a minute boundary; fires every 60 s from it
    with worker(broker_url, prefix, "w1", log=log):
        with coordinator(broker_url, prefix, SQLiteStore(db), clock=clock_from(minute + 1)):
            put_schedule(s, {"name": "m", "task": "work", "args": ["m"], "every": 60, "catchup": "last"})
        # down from minute + 1 to minute + 330: the fires at +60 ... +300 are missed, +300 by 30 s (late)
        with coordinator(broker_url, prefix, SQLiteStore(db), clock=clock_from(minute + 330)):
            wait_until(lambda: ran(log, "m"), 15, message="catch-up 'last' ran nothing")
            [listed] = list_schedules(s)
            assert listed["next_fire"] == minute + 360
    assert [fire_time(r) for r in stored_fires(db, "m")] == [minute + 300]  # the latest missed fire; none older
    assert ran(log, "m") == 1


def test_a_cron_schedule_in_a_time_zone_through_spring_forward(broker_url: str, prefix: str, tmp_path: Path) -> None:
    """Europe/Berlin, 2025-03-30: 02:00 CET jumps to 03:00 CEST, so 02:30 does not exist that day:
    the fire happens once, when the gap ends (03:00 CEST, 01:00 UTC), with the coordinator running
    across the change; the next one is 02:30 CEST the day after."""
    log = str(tmp_path / "log")
    s = settings(broker_url, prefix)
    with worker(broker_url, prefix, "w1", log=log), \
            coordinator(broker_url, prefix, clock=clock_from(utc("2025-03-30T00:59:57"))):
        put_schedule(s, {"name": "spring", "task": "work", "args": ["spring"], "cron": "30 2 * * *",
                         "timezone": "Europe/Berlin"})
        assert list_schedules(s)[0]["next_fire"] == utc("2025-03-30T01:00:00")
        wait_until(lambda: ran(log, "spring"), 15, message="the spring-forward fire never ran")
        fire = query_status(s, "spring:2025-03-30T01:00:00Z")
        assert fire["state"] == "succeeded" and fire["attempt"] == 1
        assert list_schedules(s)[0]["next_fire"] == utc("2025-03-31T00:30:00")
    assert ran(log, "spring") == 1


def test_a_cron_schedule_in_a_time_zone_through_fall_back(broker_url: str, prefix: str, tmp_path: Path) -> None:
    """America/New_York, 2025-11-02: 01:30 happens twice (EDT, then EST). It fires once, at the
    first (05:30 UTC); a coordinator running through the second (06:30 UTC) fires nothing."""
    db, log = str(tmp_path / "c.db"), str(tmp_path / "log")
    s = settings(broker_url, prefix)
    with worker(broker_url, prefix, "w1", log=log):
        with coordinator(broker_url, prefix, SQLiteStore(db), clock=clock_from(utc("2025-11-02T05:29:57"))):
            put_schedule(s, {"name": "fall", "task": "work", "args": ["fall"], "cron": "30 1 * * *",
                             "timezone": "America/New_York"})
            wait_until(lambda: ran(log, "fall"), 15, message="the 01:30 EDT fire never ran")
        second = utc("2025-11-02T06:30:00")  # 01:30 EST, the repeated wall time
        clock = clock_from(second - 2)
        with coordinator(broker_url, prefix, SQLiteStore(db), clock=clock):
            wait_until(lambda: clock() > second + 1.5, 10)  # the repeated 01:30 passes with it running
            assert list_schedules(s)[0]["next_fire"] == utc("2025-11-03T06:30:00")  # 01:30 EST next day
    assert [r.id for r in stored_fires(db, "fall")] == ["fall:2025-11-02T05:30:00Z"]
    assert ran(log, "fall") == 1
