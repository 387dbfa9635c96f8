"""Prometheus metrics (prometheus-client) for ``/metrics`` of the dashboard server.

Built on these facts:

- Two sources. The monitor's events (``monitor.Observer``): task events by state and queue, the
  end-to-end latency (a task's first publication seen to its first final event) and the run time
  (its ``started`` event to the end; a worker announces ``started`` only after ``--started-after``,
  0.1 s by default, so shorter runs have none and are not observed). The coordinator's answer to a
  ``stats`` query, asked at scrape time: tasks by state in its record, live tasks, backlog,
  its counters (dispatches, duplicates fenced, ...), the time its store spent committing.
- Each server has its own ``CollectorRegistry``: several apps in one process (tests, a user's
  ASGI app) never collide on names.
- A scrape never fails because the coordinator or the broker is away: ``mqtt_tasks_coordinator_up``
  says 0 and the coordinator's families are left out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..errors import MqttTasksError

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class EventMetrics:
    """The monitor's observer: counters and histograms fed by the task events seen."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter("mqtt_tasks_task_events", "Task status events seen, by state and queue "
                              "(failed_final: a failed event that ends the task)", ["state", "queue"],
                              registry=registry)
        self.finished = Counter("mqtt_tasks_tasks_finished", "Tasks that reached their final event, by queue",
                                ["queue"], registry=registry)
        self.latency = Histogram("mqtt_tasks_task_latency_seconds", "From a task's publication to its final event",
                                 ["queue"], buckets=LATENCY_BUCKETS, registry=registry)
        self.run_time = Histogram("mqtt_tasks_task_run_seconds", "From a task's started event to its final event",
                                  ["queue"], buckets=LATENCY_BUCKETS, registry=registry)

    def on_event(self, state: str, queue: str) -> None:
        self.events.labels(state, queue).inc()

    def on_finished(self, queue: str, latency: float | None, run_time: float | None) -> None:
        self.finished.labels(queue).inc()
        if latency is not None:
            self.latency.labels(queue).observe(latency)
        if run_time is not None:
            self.run_time.labels(queue).observe(run_time)


class FleetCollector(Collector):
    """At scrape time: the workers from their retained states, and the coordinator's stats."""

    def __init__(self, workers: Callable[[], list[dict[str, Any]]], stats: Callable[[], dict[str, Any]]) -> None:
        self._workers = workers
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        yield from self._fleet()
        try:
            stats = self._stats()
        except MqttTasksError as exc:
            log.debug("metrics: no coordinator stats: %s", exc)
            stats = None
        up = GaugeMetricFamily("mqtt_tasks_coordinator_up", "1 when the coordinator answered the stats query")
        up.add_metric([], 1.0 if stats else 0.0)
        yield up
        if stats:
            yield from coordinator_families(stats)

    def _fleet(self) -> Iterator[Metric]:
        workers = self._workers()
        online = GaugeMetricFamily("mqtt_tasks_workers", "Workers by their retained state", labels=["state"])
        by_state: dict[str, int] = {"online": 0, "draining": 0, "offline": 0}
        for w in workers:
            by_state[str(w.get("state"))] = by_state.get(str(w.get("state")), 0) + 1
        for state, n in sorted(by_state.items()):
            online.add_metric([state], n)
        yield online
        free = GaugeMetricFamily("mqtt_tasks_worker_free_slots", "Free slots a worker announced", labels=["worker"])
        held = GaugeMetricFamily("mqtt_tasks_worker_held_tasks", "Tasks a worker holds", labels=["worker"])
        for w in workers:
            if w.get("state") != "offline":
                free.add_metric([str(w.get("worker"))], float(w.get("free") or 0))
                held.add_metric([str(w.get("worker"))], float(len(w.get("tasks") or [])))
        yield free
        yield held


def coordinator_families(stats: dict[str, Any]) -> Iterator[Metric]:
    """The metric families of a coordinator's ``stats`` answer."""
    tasks = GaugeMetricFamily("mqtt_tasks_tasks", "Tasks in the coordinator's record, by state", labels=["state"])
    for state, n in sorted((stats.get("counts") or {}).items()):
        tasks.add_metric([str(state)], float(n))
    yield tasks
    for name, key, text in (("mqtt_tasks_backlog", "backlog", "Tasks in the coordinator's backlog"),
                            ("mqtt_tasks_live_tasks", "live", "Tasks the coordinator holds that have not ended")):
        gauge = GaugeMetricFamily(name, text)
        gauge.add_metric([], float(stats.get(key) or 0))
        yield gauge
    by_queue = GaugeMetricFamily("mqtt_tasks_queue_backlog", "Tasks in the coordinator's backlog, by queue",
                                 labels=["queue"])
    for queue, n in sorted((stats.get("backlog_by_queue") or {}).items()):
        by_queue.add_metric([str(queue)], float(n))
    yield by_queue
    counters: dict[str, int] = dict(stats.get("stats") or {})
    commit_us = counters.pop("commit_us", 0)
    commit = CounterMetricFamily("mqtt_tasks_coordinator_commit_seconds", "Time the coordinator's store spent "
                                 "committing (divide by mqtt_tasks_coordinator_commits_total for the mean)")
    commit.add_metric([], commit_us / 1e6)
    yield commit
    for key, value in sorted(counters.items()):
        family = CounterMetricFamily(f"mqtt_tasks_coordinator_{key}", f"Coordinator counter {key!r} since it started")
        family.add_metric([], float(value))
        yield family


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
