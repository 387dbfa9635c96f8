"""Prometheus metrics: the dashboard's /metrics and a worker's own (``--metrics-port``), scraped over
HTTP and parsed with prometheus-client's parser; task counts checked against the task ledger."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from mqtt_tasks.app import TaskApp  # noqa: E402
from mqtt_tasks.errors import TaskFailedError  # noqa: E402
from mqtt_tasks.web.monitor import Monitor  # noqa: E402
from tests.brokers import MosquittoProcess, free_port, wait_until  # noqa: E402
from tests.coord_helpers import coordinator, executions, settings, worker  # noqa: E402
from tests.web_helpers import client, dashboard_server  # noqa: E402

TASKS = 12


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of an exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def run_tasks(url: str, prefix: str) -> None:
    with TaskApp(settings=settings(url, prefix)) as app:
        handles = [app.send("work", [f"m{i}"]) for i in range(TASKS)]
        assert [h.result(15) for h in handles] == [f"m{i}" for i in range(TASKS)]
        with pytest.raises(TaskFailedError):  # dead with a coordinator, failed (final) without
            app.send("boom").result(15)


def test_dashboard_metrics_scrape(mosquitto: MosquittoProcess, prefix: str, tmp_path: Path) -> None:
    ledger = str(tmp_path / "ledger")
    with coordinator(mosquitto.url, prefix), worker(mosquitto.url, prefix, "w1", concurrency=4, log=ledger), \
            dashboard_server(settings(mosquitto.url, prefix)) as base, client(base) as http:
        wait_until(lambda: http.get("/api/workers").json()["workers"], timeout=10, message="no worker seen")
        run_tasks(mosquitto.url, prefix)
        ended = sum(1 for runs in executions(ledger).values() for kind, _ in runs if kind == "end")
        assert ended == TASKS

        def scraped() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            found = samples(http.get("/metrics").text)
            done = found.get(("mqtt_tasks_tasks_finished_total", (("queue", "default"),)), 0)
            return found if done == TASKS + 1 else None

        found = wait_until(scraped, timeout=10, interval=0.1, message="the finished tasks never all counted")
    assert found[("mqtt_tasks_task_events_total", (("queue", "default"), ("state", "succeeded")))] == ended
    assert found[("mqtt_tasks_task_latency_seconds_count", (("queue", "default"),))] == TASKS + 1
    assert found[("mqtt_tasks_workers", (("state", "online"),))] == 1
    assert found[("mqtt_tasks_worker_free_slots", (("worker", "w1"),))] == 4
    assert found[("mqtt_tasks_coordinator_up", ())] == 1
    assert found[("mqtt_tasks_tasks", (("state", "succeeded"),))] == ended
    assert found[("mqtt_tasks_tasks", (("state", "dead"),))] == 1
    assert found[("mqtt_tasks_backlog", ())] == 0
    assert not [k for k in found if k[0] == "mqtt_tasks_queue_backlog"]  # nothing waits
    assert found[("mqtt_tasks_coordinator_duplicates_total", ())] == 0
    assert found[("mqtt_tasks_coordinator_commits_total", ())] >= 1
    assert found[("mqtt_tasks_coordinator_commit_seconds_total", ())] > 0


def test_worker_metrics_scrape(mosquitto: MosquittoProcess, prefix: str, tmp_path: Path) -> None:
    from mqtt_tasks.worker.metrics import serve_worker_metrics

    port = free_port()
    with worker(mosquitto.url, prefix, "w2", concurrency=3, log=str(tmp_path / "ledger")) as w:
        stop = serve_worker_metrics(w, port, "127.0.0.1")
        try:
            run_tasks(mosquitto.url, prefix)
            found = samples(httpx.get(f"http://127.0.0.1:{port}/metrics").text)
        finally:
            stop()
    worker_label = ("worker", "w2")
    assert found[("mqtt_tasks_worker_tasks_total", (("outcome", "succeeded"), worker_label))] == TASKS
    failed = ("mqtt_tasks_worker_tasks_total", (("outcome", "failed"), worker_label))
    assert found[failed] == 1  # no coordinator: one attempt
    assert found[("mqtt_tasks_worker_concurrency", (worker_label,))] == 3
    assert found[("mqtt_tasks_worker_online", (worker_label,))] == 1
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics")  # stopped: the port is closed


def test_monitor_counts_each_task_once_and_survives_bad_payloads() -> None:
    """Pure folding: no broker (the connection is never opened)."""
    from mqtt_tasks.config import Settings

    seen: list[tuple[str, str]] = []
    finished: list[tuple[str, float | None, float | None]] = []

    class Observer:
        def on_event(self, state: str, queue: str) -> None:
            seen.append((state, queue))

        def on_finished(self, queue: str, latency: float | None, run_time: float | None) -> None:
            finished.append((queue, latency, run_time))

    monitor = Monitor(Settings(prefix="p"), Observer())
    monitor.fold("p/tasks/q1", b'{"id": "a", "task": "t"}', 100.0)
    monitor.fold("p/status/a", b'{"id": "a", "state": "started", "ts": 100.5, "queue": "q1"}', 100.5)
    monitor.fold("p/status/a", b'{"id": "a", "state": "succeeded", "ts": 101.5, "queue": "q1"}', 101.5)
    monitor.fold("p/status/a", b'{"id": "a", "state": "succeeded", "ts": 101.6, "queue": "q1"}', 101.6)  # again
    monitor.fold("p/status/a", b'{"id": "a", "state": "started", "ts": 100.9, "queue": "q1"}', 101.6)  # late copy
    monitor.fold("p/status/b", b"not json", 102.0)
    monitor.fold("p/status/b", b'{"id": "b", "state": "failed", "final": true}', 102.0)
    monitor.fold("p/workers/w1", b'{"worker": "w1", "state": "online"}', 102.0)
    monitor.fold("p/workers/w2", b'{"worker": "w2", "state": "online"}', 102.0)
    monitor.fold("p/workers/w2", b"", 102.0)  # a cleared retained state
    monitor.fold("p/status/b", b'{"id": "b", "state": "retrying", "attempt": 2}', 102.0)  # retried after its end
    monitor.fold("p/status/b", b'{"id": "b", "state": "dead", "attempt": 2}', 102.0)
    assert seen == [("started", "q1"), ("succeeded", "q1"), ("failed_final", ""), ("retrying", ""), ("dead", "")]
    assert finished == [("q1", 1.5, 1.0), ("", None, None), ("", None, None)]
    assert monitor.undecodable == 1
    assert [w["worker"] for w in monitor.workers()] == ["w1"]
    assert monitor.queue_rates(102.0) == {"q1": {"succeeded": 1, "failed": 0}, "": {"succeeded": 0, "failed": 2}}
    assert monitor.queue_rates(161.9) == {"": {"succeeded": 0, "failed": 2}}  # a minute later: q1's is gone
    points = monitor.snapshot(102.0, window=3)["series"]
    assert [(p["t"], p["succeeded"], p["failed"], p["latency_mean"]) for p in points] == [
        (100, 0, 0, None), (101, 1, 0, 1.5), (102, 0, 2, None)]


def test_backlog_by_queue_counts_what_still_waits() -> None:
    """Pure: the coordinator's per-queue backlog (the stats query, mqtt_tasks_queue_backlog)."""
    from mqtt_tasks.coordinator.backlog import Backlog
    from tests.chaos_tasks import test_policy

    backlog = Backlog(test_policy(), None, {})  # type: ignore[arg-type]  # no dispatch here: no fleet needed
    for task_id, queue in (("a", "q1"), ("b", "q1"), ("c", "q2"), ("a", "q1")):
        backlog.push(task_id, queue)
    backlog.discard("c")
    assert backlog.by_queue() == {"q1": 2}
    assert len(backlog) == 2
