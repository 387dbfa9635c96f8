"""Rate limits end to end: a real coordinator, 2 workers and several producers on Mosquitto and the
embedded broker. Start times come from a ledger the task bodies write (tests/rate_tasks.py).

A window is checked as ``period - JITTER``: the coordinator keeps the limit on its dispatches, and a
task starts one broker delivery later; deliveries differ by a few milliseconds here, so a window a
little shorter than the period must never hold more than the limit (and the policy's own windows
are checked exactly in tests/test_ratelimits.py).
"""

from __future__ import annotations

import os
import signal
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from mqtt_tasks.cli import RET_USAGE
from mqtt_tasks.errors import ConfigError, TaskFailedError
from mqtt_tasks.protocol import codec
from mqtt_tasks.protocol.rates import parse_rate_limit
from mqtt_tasks.ratelimits import within
from mqtt_tasks.transport import Connection
from mqtt_tasks.worker import Worker
from tests.brokers import wait_until
from tests.coord_helpers import HB, coordinator, settings, spawn_coordinator
from tests.rate_tasks import make_app, starts
from tests.test_cli import assert_one_line_error, run
from tests.test_scheduling import Watch, status

JITTER = 0.35


@contextmanager
def workers(url: str, prefix: str, ledger: str, count: int = 2, **limits: str | None) -> Iterator[list[Worker]]:
    with ExitStack() as stack:
        fleet = []
        for i in range(count):
            w = Worker(make_app(url, prefix, ledger, **limits), concurrency=4, worker_id=f"{prefix}-w{i}",
                       heartbeat_s=HB, grace=2.0).start()
            stack.callback(w.stop, grace=2.0)
            fleet.append(w)
        wait_until(lambda: all(w.coordinator_online for w in fleet), 15, message="workers never saw the coordinator")
        yield fleet


def submit_from_producers(url: str, prefix: str, ledger: str, plan: list[tuple[str, tuple[str, ...]]],
                          producers: int = 3) -> list[str]:
    """Each producer (its own TaskApp and connection, in its own thread) submits its share; the results."""
    results: list[str] = []
    lock = threading.Lock()

    def produce(share: list[tuple[str, tuple[str, ...]]]) -> None:
        with make_app(url, prefix, ledger) as app:
            handles = [app.registry[name].submit(*args) for name, args in share]
            done = [h.result(60) for h in handles]
        with lock:
            results.extend(done)

    threads = [threading.Thread(target=produce, args=(plan[i::producers],)) for i in range(producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    return results


def test_a_rate_limit_holds_across_the_fleet(broker_url: str, prefix: str, tmp_path: Path) -> None:
    ledger = str(tmp_path / "ledger")
    plan = [("limited", (f"t{i}",)) for i in range(12)]
    with coordinator(broker_url, prefix), workers(broker_url, prefix, ledger):
        results = submit_from_producers(broker_url, prefix, ledger, plan)
    assert sorted(results) == sorted(args[0] for _, args in plan)  # all finish
    runs = starts(ledger)
    assert sorted(runs) == sorted(results) and all(len(t) == 1 for t in runs.values())
    times = [t for ts in runs.values() for t in ts]
    limit = parse_rate_limit("4/s")
    assert within(times, limit, slack=JITTER), sorted(times)
    assert max(times) - min(times) >= 2.0 - JITTER  # 12 at 4/s: three windows, not one burst


def test_per_key_limits_are_independent(broker_url: str, prefix: str, tmp_path: Path) -> None:
    ledger = str(tmp_path / "ledger")
    plan = [("per_device", (f"{dev}{i}", dev)) for i in range(4) for dev in ("a", "b")]
    with coordinator(broker_url, prefix), workers(broker_url, prefix, ledger):
        results = submit_from_producers(broker_url, prefix, ledger, plan, producers=2)
    assert len(results) == 8
    limit = parse_rate_limit("2/s")
    for dev in ("a", "b"):
        times = [t for ts in starts(ledger, dev).values() for t in ts]
        assert len(times) == 4 and within(times, limit, slack=JITTER), (dev, sorted(times))
    both = sorted(t for ts in starts(ledger).values() for t in ts)
    assert not within(both, limit), both  # the keys did not share one window: 4 ran in the first one


def test_the_workers_registration_limits_tasks_from_any_client(broker_url: str, prefix: str,
                                                               tmp_path: Path) -> None:
    """mosquitto_pub-style tasks without rate fields, of a task the workers registered with
    ``rate_limit="3/s"`` and a key argument: the workers add the limit and key, and hand them over."""
    ledger = str(tmp_path / "ledger")
    ids = [f"{prefix}-raw{i}" for i in range(6)]
    with coordinator(broker_url, prefix), workers(broker_url, prefix, ledger, key_limit="3/s"), \
            make_app(broker_url, prefix, ledger) as app:
        raw = Connection(settings(broker_url, prefix), f"{prefix}-raw-{uuid.uuid4().hex[:6]}").connect()
        try:
            for i, task_id in enumerate(ids):
                raw.publish(f"{prefix}/tasks/default", codec.encode(
                    {"id": task_id, "task": "per_device", "args": [f"r{i}"], "kwargs": {"device": "d"}}))
        finally:
            raw.close()
        assert sorted(app.handle(task_id).result(30) for task_id in ids) == [f"r{i}" for i in range(6)]
        assert status(broker_url, prefix, ids[0])["rate_key"] == "d"
    times = [t for ts in starts(ledger, "d").values() for t in ts]
    assert len(times) == 6 and within(times, parse_rate_limit("3/s"), slack=JITTER), sorted(times)
    assert max(times) - min(times) >= 1.0 - JITTER


def test_a_signed_task_limited_by_the_registration_still_verifies(broker_url: str, prefix: str,
                                                                  tmp_path: Path) -> None:
    """The worker hands the registration's limit over beside the task, not in it: the coordinator
    dispatches the task as it was signed, and the worker that gets it verifies it and runs it."""
    ledger, key = str(tmp_path / "ledger"), "k" * 32
    with coordinator(broker_url, prefix), workers(broker_url, prefix, ledger, key_limit="3/s", signing_key=key), \
            make_app(broker_url, prefix, ledger, signing_key=key) as app:
        del app.registry["per_device"]  # the producer sends it by name, unregistered: no rate fields
        handles = [app.send("per_device", [f"s{i}"], {"device": "d"}) for i in range(4)]
        assert sorted(h.result(30) for h in handles) == [f"s{i}" for i in range(4)]
    times = [t for ts in starts(ledger, "d").values() for t in ts]
    assert len(times) == 4 and within(times, parse_rate_limit("3/s"), slack=JITTER), sorted(times)
    assert max(times) - min(times) >= 1.0 - JITTER


def test_a_parked_task_says_it_waits_on_its_rate_limit(broker_url: str, prefix: str, tmp_path: Path) -> None:
    ledger = str(tmp_path / "ledger")
    with coordinator(broker_url, prefix), workers(broker_url, prefix, ledger, count=1, limit="1/m"), \
            make_app(broker_url, prefix, ledger, limit="1/m") as app:
        first = app.registry["limited"].submit("first")
        assert first.result(15) == "first"
        second = app.registry["limited"].submit("second")
        record = wait_until(lambda: (r := status(broker_url, prefix, second.id)).get("rate_limited") and r, 15, 0.1)
        assert record["state"] == "backlog" and record["rate_limit"] == "1/m"
        assert record["rate_limited"]["next_at"] >= starts(ledger)["first"][0] + 60 - JITTER
        shown = run("status", second.id, "--broker", broker_url, "--prefix", prefix)
        assert shown.exit_code == 0 and '"rate_limited"' in shown.output and '"limit": "1/m"' in shown.output
        second.cancel("not needed")  # a parked task is in the backlog: cancelled at once
        wait_until(lambda: status(broker_url, prefix, second.id)["state"] == "cancelled", 10, 0.1)
    assert list(starts(ledger)) == ["first"]


def test_a_coordinator_killed_mid_window_lets_no_burst_through(broker_url: str, prefix: str,
                                                               tmp_path: Path) -> None:
    ledger, db = str(tmp_path / "ledger"), str(tmp_path / "coord.db")
    limit = parse_rate_limit("3/4s")  # a window longer than a restart: a forgotten one would let 3 through at once
    proc = spawn_coordinator(broker_url, prefix, db)
    try:
        with workers(broker_url, prefix, ledger, limit=limit.text), \
                make_app(broker_url, prefix, ledger, limit=limit.text) as app:
            handles = [app.registry["limited"].submit(f"k{i}") for i in range(6)]
            assert app.wait_recorded(15)
            wait_until(lambda: len(starts(ledger)) >= 3, 15, message="the first window never ran")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
            proc = spawn_coordinator(broker_url, prefix, db)
            assert sorted(h.result(30) for h in handles) == [f"k{i}" for i in range(6)]
    finally:
        proc.terminate()
        proc.wait(10)
    times = sorted(t for ts in starts(ledger).values() for t in ts)
    assert len(times) == 6 and within(times, limit, slack=JITTER), times


def test_without_a_coordinator_a_limited_task_is_refused_not_run_unlimited(broker_url: str, prefix: str,
                                                                            tmp_path: Path) -> None:
    ledger = str(tmp_path / "ledger")
    watch = Watch(broker_url, prefix, "errors")
    try:
        w = Worker(make_app(broker_url, prefix, ledger), concurrency=2, worker_id=f"{prefix}-w", heartbeat_s=HB)
        with _started(w), make_app(broker_url, prefix, ledger) as app:
            handle = app.registry["limited"].submit("x")
            with pytest.raises(TaskFailedError) as info:
                handle.result(10)
            assert info.value.status["error"]["type"] == "RateLimitError"
            report = wait_until(lambda: watch.events(handle.id), 10)[0]
            assert "refused rather than run unlimited" in report["reason"]
    finally:
        watch.close()
    assert starts(ledger) == {}


@contextmanager
def _started(w: Worker) -> Iterator[Worker]:
    w.start()
    try:
        yield w
    finally:
        w.stop(grace=2.0)


def test_bad_rate_limits_get_one_clear_error(broker_url: str, prefix: str, tmp_path: Path) -> None:
    ledger = str(tmp_path / "ledger")
    cli = run("submit", "limited", "x", "--rate-limit", "10/x", "--broker", broker_url, "--prefix", prefix)
    assert "rate limit '10/x' is malformed" in assert_one_line_error(cli, RET_USAGE)
    cli = run("submit", "limited", "x", "--rate-key", "k", "--broker", broker_url, "--prefix", prefix)
    assert "--rate-key needs --rate-limit" in assert_one_line_error(cli, RET_USAGE)
    with make_app(broker_url, prefix, ledger) as app, pytest.raises(ConfigError, match="over 24 h"):
        app.registry["limited"].submit_with(["x"], rate_limit="1/48h")
    watch = Watch(broker_url, prefix, "errors")
    try:
        with coordinator(broker_url, prefix), workers(broker_url, prefix, ledger, count=1), \
                make_app(broker_url, prefix, ledger) as app:
            bad_id = f"{prefix}-bad"
            raw = Connection(settings(broker_url, prefix), f"{prefix}-raw-{uuid.uuid4().hex[:6]}").connect()
            try:
                raw.publish(f"{prefix}/tasks/default", codec.encode(
                    {"id": bad_id, "task": "limited", "args": ["bad"], "rate_limit": "lots"}))
            finally:
                raw.close()
            reports = wait_until(lambda: [r for r in watch.events(bad_id) if "rate_limit" in r["reason"]], 10)
            assert all("rate limit 'lots' is malformed" in r["reason"] for r in reports), reports  # both parts say
            assert app.registry["limited"].submit("good").result(15) == "good"  # the next good one runs
    finally:
        watch.close()
    assert "bad" not in starts(ledger)
