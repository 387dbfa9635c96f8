"""The demo: run_demo's figures add up in both phases; `mqtt-tasks demo` says what happens.

Each run starts real processes (an embedded broker, worker processes) and waits on final status
events, never on a sleep; counts are kept small so that a run takes a few seconds.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import pytest
from click.testing import CliRunner

from mqtt_tasks.cli import RET_MISSING_EXTRA, cli
from mqtt_tasks.demo import DemoResult, FastResult, RecoveryResult, Screen, fast_plan, percentile, run_demo, slow_plan


class Recorder(Screen):
    """A screen that keeps what the demo told its viewer."""

    def __init__(self) -> None:
        self.phases: list[str] = []
        self.said: list[str] = []
        self.shown: list[Any] = []

    def phase(self, title: str, lines: Sequence[str]) -> None:
        self.phases.append(title)

    def say(self, text: str) -> None:
        self.said.append(text)

    def show(self, result: Any) -> None:
        self.shown.append(result)


def _assert_fast_phase_adds_up(fast: FastResult, tasks: int, workers: list[str]) -> None:
    assert fast.submitted == tasks and fast.missing == 0
    assert fast.succeeded + fast.failed == tasks
    assert fast.failed == fast.on_purpose > 0  # only the deliberate divisions by zero
    assert sum(fast.per_worker.values()) == tasks + fast.singles  # every task ran on a worker ...
    assert sorted(fast.per_worker) == workers and min(fast.per_worker.values()) > 0  # ... all of them took some
    assert 0 < fast.burst_p50_ms <= fast.burst_p99_ms < 30_000
    assert 0 < fast.single_p50_ms <= fast.single_p99_ms < 30_000 and fast.singles > 0
    assert fast.throughput > 0


def test_run_demo_kills_a_worker_and_the_coordinator_recovers_its_tasks() -> None:
    screen = Recorder()
    result = run_demo(workers=3, tasks=60, fail_every=10, singles=5, screen=screen)
    assert result.broker_url.startswith("mqtt://127.0.0.1:")
    _assert_fast_phase_adds_up(result.fast, 60, result.workers)
    assert result.fast.on_purpose == 6

    rec = result.recovery
    assert rec.submitted == 16  # 8 slots on each worker but one: room for the killed worker's calls
    assert rec.killed in result.workers and rec.held
    assert rec.missing == 0 and rec.succeeded == rec.submitted and rec.failed == 0  # lost: 0
    pending = len(rec.held)  # (a call it finished as it died would not need dispatching again)
    assert rec.redispatched == rec.rerun == pending > 0  # each ran again, as attempt 2, elsewhere
    assert rec.duplicates == 0
    assert rec.per_worker[rec.killed] == 0 and sum(rec.per_worker.values()) == rec.submitted
    assert rec.detection == "its Last Will"
    assert rec.will_s is not None and rec.first_redispatch_s is not None
    assert rec.redispatch_s is not None and rec.recovered_s is not None
    assert 0 <= rec.will_s <= rec.first_redispatch_s <= rec.redispatch_s < rec.recovered_s

    record = result.coordinator  # its own record agrees with what the watcher saw
    assert record is not None
    assert record.recorded == record.submitted == 60 + 5 + 16
    assert record.states == {"succeeded": 60 + 5 + 16 - 6, "dead": 6}
    assert record.redispatched == rec.redispatched and record.duplicates == 0
    (reason,) = record.reasons  # a suspect now: the coordinator says it runs again
    assert reason.startswith(f"worker {rec.killed} went offline while running it")
    assert result.problems() == []

    assert screen.phases == ["Phase 1: fast tasks", "Phase 2: a worker dies mid-run"]
    told = "\n".join(screen.said)
    for needle in (f"killed {rec.killed}", "Last Will", "with attempt 2", "none lost", "docs/benchmarks.md"):
        assert needle in told
    assert [type(s) for s in screen.shown] == [FastResult, RecoveryResult, DemoResult]


def test_run_demo_without_a_coordinator_kills_no_worker(broker_url: str, prefix: str) -> None:
    screen = Recorder()
    result = run_demo(workers=2, tasks=30, fail_every=15, singles=3, slow_tasks=4, coordinator=False,
                      broker_url=broker_url, prefix=prefix, screen=screen)
    _assert_fast_phase_adds_up(result.fast, 30, result.workers)
    rec = result.recovery
    assert rec.killed is None and "no coordinator" in rec.why_no_kill
    assert rec.succeeded == 4 and rec.missing == rec.redispatched == rec.duplicates == 0
    assert result.coordinator is None and result.problems() == []
    assert screen.phases[1] == "Phase 2: slow tasks, no worker killed"
    assert not any("docs/benchmarks.md" in line for line in screen.said)  # not the embedded broker


def test_demo_command_tells_both_phases() -> None:
    result = CliRunner().invoke(cli, ["demo", "--workers", "2", "--tasks", "40", "--slow-tasks", "6"],
                                prog_name="mqtt-tasks")
    assert result.exit_code == 0, result.output
    for needle in ("Phase 1: fast tasks", "tasks/s", "latency, one by one", "docs/benchmarks.md",
                   "Phase 2: a worker dies mid-run", "with SIGKILL", "Last Will", "with attempt 2",
                   "dispatched again", "lost", "duplicates", "demo-worker-1", "demo-worker-2",
                   "keeps the record", "none lost"):
        assert needle in result.stdout, needle


def test_demo_command_exits_1_when_a_task_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = FastResult(submitted=10, succeeded=9, failed=0, on_purpose=0, missing=1, elapsed_s=1.0,
                      burst_p50_ms=1, burst_p99_ms=2, single_p50_ms=1, single_p99_ms=2, singles=1)
    missing = DemoResult("mqtt://127.0.0.1:1", ["demo-worker-1"], 8, fast, RecoveryResult(submitted=0))
    monkeypatch.setattr("mqtt_tasks.demo.run_demo", lambda **kwargs: missing)
    result = CliRunner().invoke(cli, ["demo", "--no-coordinator"], prog_name="mqtt-tasks")
    assert result.exit_code == 1
    assert "1 task(s) got no final status event" in result.output


def test_demo_help_documents_the_options() -> None:
    result = CliRunner().invoke(cli, ["demo", "--help"], prog_name="mqtt-tasks")
    assert result.exit_code == 0
    for option in ("--workers", "--tasks", "--slow-tasks", "--coordinator / --no-coordinator",
                   "--kill-worker / --no-kill-worker"):
        assert option in result.output


def test_plans_and_percentile() -> None:
    plan = fast_plan(100, fail_every=50)
    assert [p for p in plan if p == ("divide", [49, 0])] and sum(1 for n, a in plan if n == "divide" and a[1] == 0) == 2
    assert {name for name, _ in plan} == {"add", "checksum", "primes", "divide"}
    assert all(1200 <= args[0] < 2000 for _, args in slow_plan(20))
    assert percentile([], 0.5) == 0.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile(list(range(101)), 0.99) == 99


def test_demo_tasks_compute_what_they_say(amqtt_broker: Any, prefix: str) -> None:
    """The fast tasks do real work; a stopped worker leaves no unclosed event loop (slow_call is async).

    An unclosed loop warns from ``__del__`` at some later garbage collection; under
    ``filterwarnings = error`` on CPython 3.11 that can land inside an AST construction and
    crash pytest at the session's end ("AST constructor recursion depth mismatch").
    """
    import gc
    import warnings

    from mqtt_tasks import Settings, Worker
    from mqtt_tasks.demo import build_demo_app

    app = build_demo_app(Settings.from_url(amqtt_broker.url + "?protocol=3.1.1", prefix=prefix))
    with Worker(app, worker_id="demo-test", concurrency=2, grace=5.0):
        assert app.send("primes", [100]).result(timeout=20) == 25
        assert app.send("add", [2, 3]).result(timeout=20) == 5
        assert len(app.send("checksum", ["x"]).result(timeout=20)) == 16
        assert app.send("slow_call", [10, "k"]).result(timeout=20)
    app.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    assert [str(w.message) for w in caught if "unclosed event loop" in str(w.message)] == []


def test_demo_command_without_the_demo_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mqtt_tasks.broker", None)  # as if amqtt were not installed
    result = CliRunner().invoke(cli, ["demo"], prog_name="mqtt-tasks")
    assert result.exit_code == RET_MISSING_EXTRA, result.output
    assert "pip install 'mqtt-tasks[demo]'" in result.output
