"""Periodic tasks end to end, on both brokers: schedules managed over the wire and from the CLI,
declared in code, fired by a coordinator that is killed -9 around fire times (nothing fires twice,
missed fires follow the catch-up policy), and overlap policies with long-running tasks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mqtt_tasks.cli import RET_NOT_FOUND, RET_USAGE
from mqtt_tasks.coordinator import Coordinator
from mqtt_tasks.errors import ScheduleNotFoundError
from mqtt_tasks.protocol.states import SUCCEEDED
from mqtt_tasks.schedules import list_schedules, put_schedule, remove_schedule
from mqtt_tasks.store import SQLiteStore, TaskRecord
from mqtt_tasks.worker import Worker
from tests.brokers import wait_until
from tests.chaos_tasks import make_app
from tests.coord_helpers import HB, ROOT, coordinator, executions, settings, spawn_coordinator, worker
from tests.test_cli import assert_one_line_error, run


def every(name: str, seconds: int = 1, *args: Any, **options: Any) -> dict[str, Any]:
    return {"name": name, "task": "work", "args": list(args) or [name], "every": seconds, **options}


def fires(c: Coordinator, name: str, state: str | None = SUCCEEDED) -> list[TaskRecord]:
    records = [r for r in c.store.list_tasks(limit=10_000) if r.id.startswith(name + ":")]
    return sorted((r for r in records if state is None or r.state == state), key=lambda r: r.id)


def fire_time(record: TaskRecord) -> float:
    assert record.body is not None
    return float(record.body["scheduled_for"])


# -- over the wire and the CLI ----------------------------------------------------------------
def test_an_every_1_schedule_runs_each_fire_once_until_removed(broker_url: str, prefix: str, tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    s = settings(broker_url, prefix)
    with coordinator(broker_url, prefix) as c, worker(broker_url, prefix, "w1", log=log):
        answer = put_schedule(s, every("tick"))
        assert answer["created"] and answer["schedule"]["next_fire"] > time.time() - 1
        assert put_schedule(s, every("tick"))["changed"] is False  # idempotent
        wait_until(lambda: len(fires(c, "tick")) >= 3, 15)
        listed = list_schedules(s)
        assert [x["name"] for x in listed] == ["tick"] and listed[0]["fired"] >= 3
        remove_schedule(s, "tick")
        assert list_schedules(s) == []
        with pytest.raises(ScheduleNotFoundError):
            remove_schedule(s, "tick")
        wait_until(lambda: not c._records.live, 10)  # what was fired finishes
        done = fires(c, "tick")
        times = [fire_time(r) for r in done]
        assert times == sorted(set(times)) and all(t == int(t) for t in times)
        assert all(r.attempt == 1 and r.body and r.body["schedule"] == "tick" for r in done)
        assert len(executions(log)["tick"]) == 2 * len(fires(c, "tick", None))  # start + end, once each


def test_a_schedule_declared_in_code_reaches_a_coordinator_started_later(broker_url: str, prefix: str) -> None:
    app = make_app(broker_url, prefix)
    app.periodic(every=1, name="beat", args=["from-code"])(app.registry["work"])
    w = Worker(app, concurrency=2, worker_id="w1", heartbeat_s=HB, grace=2.0).start()
    try:
        with coordinator(broker_url, prefix) as c:
            wait_until(lambda: len(fires(c, "beat")) >= 2, 20)
            [listed] = list_schedules(settings(broker_url, prefix))
            assert listed["source"] == "code" and listed["args"] == ["from-code"]
    finally:
        w.stop(grace=2.0)


# -- kill -9 around fire times ----------------------------------------------------------------
def _kill_cycle(url: str, prefix: str, db: str,
                proc: subprocess.Popen[str]) -> tuple[float, float, subprocess.Popen[str]]:
    """kill -9 the coordinator, stay down 3 s, start it again: (killed at, restarting at, new process)."""
    proc.kill()
    proc.wait()
    killed = time.time()
    wait_until(lambda: time.time() > killed + 3.0, 5)  # downtime: fire times pass with no coordinator
    restarting = time.time()
    return killed, restarting, spawn_coordinator(url, prefix, db)


@pytest.mark.parametrize("catchup", ["none", "all"])
def test_kill_9_nothing_fires_twice_and_missed_fires_follow_the_catchup(broker_url: str, prefix: str,
                                                                         tmp_path: Path, catchup: str) -> None:
    log, db = str(tmp_path / "log"), str(tmp_path / "c.db")
    s = settings(broker_url, prefix)
    proc = spawn_coordinator(broker_url, prefix, db)
    downs = []
    try:
        with worker(broker_url, prefix, "w1", concurrency=4, log=log):
            put_schedule(s, every("k9", 1, catchup=catchup, overlap="allow_all"))
            for _ in range(2):
                seen = _ran(log)
                wait_until(lambda seen=seen: _ran(log) >= seen + 2, 15)  # type: ignore[misc]
                killed, restarting, proc = _kill_cycle(broker_url, prefix, db, proc)
                downs.append((killed, restarting))
            seen = _ran(log)
            wait_until(lambda: _ran(log) >= seen + 2, 15)
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
            with SQLiteStore(db) as store:
                wait_until(lambda: _settled(store, log), 15)
    finally:
        if proc.poll() is None:
            proc.kill()
    with SQLiteStore(db) as store:
        records = [r for r in store.list_tasks(limit=10_000) if r.id.startswith("k9:")]
    times = sorted(fire_time(r) for r in records)
    assert len(times) == len(set(times)) == len(records)
    assert _ran(log) == len(records)  # each fire ran once: none was published twice or lost
    for killed, restarting in downs:
        missed = [t for t in range(int(killed) + 1, int(restarting) - 1)]
        present = [t for t in missed if t in times]
        assert present == (missed if catchup == "all" else []), (catchup, killed, restarting, times)


def _ran(log: str) -> int:
    return sum(1 for kind, _pid in executions(log).get("k9", []) if kind == "end")


def _settled(store: SQLiteStore, log: str) -> bool:
    store.commit()
    return _ran(log) == sum(1 for r in store.list_tasks(limit=10_000) if r.id.startswith("k9:"))


# -- overlap with long-running tasks ----------------------------------------------------------
def _intervals(c: Coordinator, name: str) -> list[tuple[float, float, float]]:
    """(fire time, started, finished) of each finished fire."""
    out = []
    for r in fires(c, name):
        started = [h["ts"] for h in r.history if h.get("event") == "started"][0]
        out.append((fire_time(r), started, r.updated))
    return sorted(out, key=lambda x: x[1])


@pytest.mark.parametrize("overlap", ["skip", "buffer_one", "allow_all"])
def test_overlap_policies_with_tasks_longer_than_the_period(broker_url: str, prefix: str, overlap: str) -> None:
    s = settings(broker_url, prefix)
    with coordinator(broker_url, prefix) as c, worker(broker_url, prefix, "w1", concurrency=4):
        put_schedule(s, every("long", 1, "long", 2.2, overlap=overlap))
        wait_until(lambda: len(fires(c, "long")) >= 3, 25)
        [schedule] = list_schedules(s)
        remove_schedule(s, "long")
        wait_until(lambda: not c._records.live, 10)
        runs = _intervals(c, "long")
        overlapping = any(b[1] < a[2] for a, b in zip(runs, runs[1:], strict=False))
        assert (schedule["skipped"] == 0) == (overlap == "allow_all"), schedule
        if overlap == "allow_all":
            assert overlapping and len(runs) >= 5
        else:
            assert not overlapping, runs
        if overlap == "buffer_one":  # a buffered fire starts when the one before it ends, late
            assert any(started - fired > 1.0 for fired, started, _ in runs[1:]), runs
            gaps = [b[1] - a[2] for a, b in zip(runs, runs[1:], strict=False)]
            assert min(gaps) < 0.8, gaps
        if overlap == "skip":
            assert all(started - fired < 1.0 for fired, started, _ in runs), runs


# -- the CLI ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "words"), [
    (["--cron", "61 * * * *"], "minute field '61': 61 is out of range 0-59"),
    (["--cron", "* * 0 * *"], "day of month field '0'"),
    (["--cron", "* * * * * *"], "6 field(s), expected 5"),
    (["--cron", "@reboot"], "unknown macro"),
    (["--cron", "* * * * *", "--every", "5"], "exactly one of --cron"),
    ([], "exactly one of --cron"),
    (["--cron", "* * * * *", "--tz", "Mars/Olympus"], "unknown time zone 'Mars/Olympus'"),
])
def test_schedule_add_bad_input_is_one_line(args: list[str], words: str) -> None:
    line = assert_one_line_error(run("schedule", "add", "n1", "work", *args), RET_USAGE)
    assert words in line


def test_schedule_add_bad_name_and_bad_every() -> None:
    assert "name" in assert_one_line_error(run("schedule", "add", "a:b", "work", "--every", "5"), RET_USAGE)
    assert_one_line_error(run("schedule", "add", "n", "work", "--every", "0"), RET_USAGE)


def test_schedule_cli_add_list_rm(broker_url: str, prefix: str) -> None:
    base = ["--broker", broker_url, "--prefix", prefix]
    with coordinator(broker_url, prefix):
        result = run("schedule", "add", "nightly", "work", "x", "--cron", "30 2 * * *", "--tz", "Europe/Berlin",
                     "--overlap", "buffer_one", "--catchup", "none", *base)
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith("schedule nightly created; next fire ")
        assert "unchanged" in run("schedule", "add", "nightly", "work", "x", "--cron", "30 2 * * *", "--tz",
                                  "Europe/Berlin", "--overlap", "buffer_one", "--catchup", "none", *base).stdout
        listed = run("schedule", "list", *base)
        assert listed.exit_code == 0 and "nightly" in listed.stdout and "30 2 * * * Europe/Berlin" in listed.stdout
        assert '"overlap": "buffer_one"' in run("schedule", "list", "--json", *base).stdout
        assert run("schedule", "rm", "nightly", *base).stdout.strip() == "schedule nightly removed"
        line = assert_one_line_error(run("schedule", "rm", "nightly", *base), RET_NOT_FOUND)
        assert "no schedule named 'nightly'" in line


def test_a_bad_put_from_another_client_is_answered_with_the_reason(broker_url: str, prefix: str) -> None:
    from mqtt_tasks.coordinator.queries import _ask

    with coordinator(broker_url, prefix):
        answer = _ask(settings(broker_url, prefix), {"op": "schedule.put", "schedule": {
            "name": "x", "task": "work", "cron": "0 0 * 13 *"}}, 5.0)
        assert answer["ok"] is False and "month field '13'" in answer["error"]


def test_schedule_add_bad_cron_as_a_real_subprocess() -> None:
    done = subprocess.run([sys.executable, "-m", "mqtt_tasks", "schedule", "add", "n", "work", "--cron",
                           "*/0 * * * *"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == RET_USAGE
    assert done.stderr.strip().splitlines() == [
        "Error: invalid schedule 'n': cron: invalid cron expression '*/0 * * * *': minute field '*/0': "
        "step '0' is not a positive whole number"]
