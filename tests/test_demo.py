"""The demo: run_demo returns sane figures; `mqtt-tasks demo` exits 0 with its table."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

from click.testing import CliRunner

from mqtt_tasks.cli import cli
from mqtt_tasks.demo import DemoResult, demo_plan, percentile, run_demo


def _assert_sane(result: DemoResult, tasks: int, workers: int) -> None:
    assert result.tasks == tasks
    assert result.missing == 0
    assert result.succeeded + result.failed == tasks
    assert result.failed == result.expected_failures > 0  # only the deliberate divide-by-zero ones
    assert sum(result.per_worker.values()) == tasks
    assert len(result.per_worker) == workers and min(result.per_worker.values()) > 0
    assert 0 < result.latency_p50_ms <= result.latency_p99_ms < 30_000
    assert result.throughput > 0


def test_run_demo_on_the_embedded_broker() -> None:
    progress: list[tuple[int, int]] = []
    result = run_demo(workers=2, tasks=40, concurrency=4, fail_every=10,
                      on_progress=lambda done, total: progress.append((done, total)))
    _assert_sane(result, tasks=40, workers=2)
    assert result.expected_failures == 4
    assert progress[-1] == (40, 40)
    assert result.broker_url.startswith("mqtt://127.0.0.1:")


def test_run_demo_on_a_given_broker_with_a_service(broker_url: str, prefix: str) -> None:
    entered: list[str] = []

    @contextmanager
    def service(settings: Any) -> Any:  # where the coordinator plugs in
        entered.append(settings.prefix)
        yield
        entered.append("left")

    result = run_demo(workers=3, tasks=30, concurrency=2, fail_every=15, broker_url=broker_url, prefix=prefix,
                      services=[service])
    _assert_sane(result, tasks=30, workers=3)
    assert entered == [prefix, "left"]


def test_plan_and_percentile() -> None:
    plan = demo_plan(100, fail_every=50)
    assert [p for p in plan if p == ("divide", [49, 0])] and sum(1 for n, a in plan if n == "divide" and a[1] == 0) == 2
    assert {name for name, _ in plan} == {"add", "checksum", "nap", "divide"}
    assert percentile([], 0.5) == 0.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile(list(range(101)), 0.99) == 99


def test_demo_command() -> None:
    result = CliRunner().invoke(cli, ["demo", "--workers", "2", "--tasks", "20"], prog_name="mqtt-tasks")
    assert result.exit_code == 0, result.output
    for needle in ("succeeded", "failed", "throughput", "latency p99", "demo-worker-1", "demo-worker-2"):
        assert needle in result.stdout


def test_stopped_workers_leave_no_unclosed_event_loop() -> None:
    """Worker.stop must close the event loop that ran async tasks (the demo's ``nap``).

    An unclosed loop warns from ``__del__`` at some later garbage collection; under
    ``filterwarnings = error`` on CPython 3.11 that can land inside an AST construction and
    crash pytest at the session's end ("AST constructor recursion depth mismatch").
    """
    import gc
    import warnings

    run_demo(workers=1, tasks=8, fail_every=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    unclosed = [str(w.message) for w in caught if "unclosed event loop" in str(w.message)]
    assert unclosed == []


def test_demo_recovers_from_a_killed_worker(broker_url: str, prefix: str) -> None:
    """Worker processes, a coordinator, one worker SIGKILLed a third of the way: nothing lost."""
    from mqtt_tasks.coordinator import Coordinator

    result = run_demo(workers=3, tasks=150, concurrency=4, fail_every=50, broker_url=broker_url, prefix=prefix,
                      services=[lambda settings: Coordinator(settings)], kill_worker=True, timeout=90)
    assert result.killed == "demo-worker-1"
    assert result.missing == 0
    assert result.succeeded == 147 and result.failed == 3
    # how many it held depends on timing; the promise is that none of them was lost (above)
