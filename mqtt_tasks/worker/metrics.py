"""``mqtt-worker --metrics-port``: a worker's own Prometheus metrics (extra ``mqtt-tasks[metrics]``).

Built on these facts:

- Read at scrape time from ``Worker.snapshot()`` (a plain value, safe from any thread): nothing is
  added to the task path, and a worker without the option never imports prometheus-client.
- Served by prometheus-client's own small HTTP server on its own thread, with a registry of its
  own (no process or GC collectors of another library's choosing mixed in by accident).
- The families carry a ``worker`` label, so the dashboard's ``/metrics`` and every worker's can be
  scraped into one Prometheus without clashes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .lifecycle import Worker
    from .running import WorkerSnapshot


def worker_families(snapshot: WorkerSnapshot) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    labels = [snapshot.worker_id]
    tasks = CounterMetricFamily("mqtt_tasks_worker_tasks", "Attempts by outcome since the worker started",
                                labels=["worker", "outcome"])
    for outcome, n in sorted(snapshot.stats.items()):
        tasks.add_metric([*labels, outcome], float(n))
    yield tasks
    for name, value, text in (
            ("mqtt_tasks_worker_online", 1.0 if snapshot.state == "online" else 0.0, "1 while the worker takes tasks"),
            ("mqtt_tasks_worker_concurrency", snapshot.concurrency, "Slots of the worker"),
            ("mqtt_tasks_worker_free_slots", snapshot.free, "Slots free now"),
            ("mqtt_tasks_worker_waiting", snapshot.waiting, "Tasks in line for a slot"),
            ("mqtt_tasks_worker_held_tasks", len(snapshot.held), "Attempts started and not yet reported"),
            ("mqtt_tasks_worker_coordinator_online", 1.0 if snapshot.coordinator_online else 0.0,
             "1 while the coordinator's presence says online")):
        gauge = GaugeMetricFamily(name, text, labels=["worker"])
        gauge.add_metric(labels, float(value))
        yield gauge


class _SnapshotCollector:
    def __init__(self, snapshot: Callable[[], WorkerSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        yield from worker_families(self._snapshot())


def serve_worker_metrics(worker: Worker, port: int, host: str = "0.0.0.0") -> Callable[[], None]:  # noqa: S104
    """Serve ``worker``'s metrics on ``http://host:port/metrics``; returns the function that stops it.

    ``ImportError`` without prometheus-client; ``OSError`` when the port is taken."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(_SnapshotCollector(worker.snapshot))
    server, thread = start_http_server(port, host, registry=registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5.0)
    return stop
