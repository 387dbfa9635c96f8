"""What one dashboard server holds: its settings, the live monitor, the producer, the metrics.

Built on these facts:

- Everything starts on first use (``ensure_started``), not at import or construction: a server
  mounted in a user's ASGI app gets no lifespan events of its own, and a broker that is down when
  the server starts must not stop it from serving (requests then answer 503 until it is back).
- Reads of the coordinator's record go through the coordinator's own queries
  (``coordinator.queries``, ``admin``, ``cancels``, ``schedules``): one short-lived connection a
  call, so they work with any store and need nothing but the broker.
- Tasks are published by one ``TaskApp`` (the producer's receipts included, so a task the broker
  dropped before the coordinator recorded it is sent again). With a username in the settings it
  and the queries' short-lived clients read their replies under ``P/replies/{username}/``, each
  from a client id of its own (``protocol.rpc.reply_address``), so the ``dashboard`` role of
  ``mqtt-tasks acl`` fits it, and several dashboard servers may share one username.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from ..app import TaskApp
from ..config import Settings
from ..errors import MqttTasksError
from .monitor import Monitor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WebOptions:
    """``token``: required on every request when set (auth.py). ``query_timeout``: seconds to wait
    for the coordinator's answer. ``ack_timeout``: for the broker's ack of a submitted task.
    ``max_wait``: the longest ``?wait=``. ``metrics``: serve ``/metrics``."""

    token: str | None = None
    query_timeout: float = 5.0
    ack_timeout: float = 5.0
    max_wait: float = 300.0
    metrics: bool = True


class WebState:
    """The shared parts behind every request of one server."""

    def __init__(self, settings: Settings, options: WebOptions) -> None:
        self.settings = settings
        self.options = options
        self.registry: Any = None
        observer = None
        if options.metrics:
            from prometheus_client import CollectorRegistry

            from .metrics import EventMetrics, FleetCollector

            self.registry = CollectorRegistry()
            observer = EventMetrics(self.registry)
            self.registry.register(FleetCollector(self.workers, self.coordinator_stats))
        self.monitor = Monitor(settings, observer)
        self._producer: TaskApp | None = None
        self._lock = threading.Lock()
        self._started = False

    def ensure_started(self) -> None:
        """Start the monitor once; a broker that is away now is retried by paho in the background."""
        with self._lock:
            if self._started:
                return
            self._started = True
        try:
            self.monitor.start(timeout=self.options.query_timeout)
        except MqttTasksError as exc:
            log.warning("dashboard: no live view yet (%s); retrying in the background", exc)

    def producer(self) -> TaskApp:
        with self._lock:
            if self._producer is None:
                self._producer = TaskApp(settings=self.settings)
            return self._producer

    def workers(self) -> list[dict[str, Any]]:
        return self.monitor.workers()

    def coordinator_stats(self) -> dict[str, Any]:
        from ..coordinator import query_stats

        return query_stats(self.settings, timeout=min(2.0, self.options.query_timeout))

    def close(self) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
            started, self._started = self._started, False
        if producer is not None:
            producer.close()
        if started:
            self.monitor.stop()
