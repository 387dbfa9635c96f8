"""Probe: does the broker route ``$share`` subscriptions at all? Asked once, at start.

Facts this module is built on: NATS 2.9's MQTT support, aedes 1.2, RabbitMQ 3.10's MQTT plugin
and stock amqtt 0.12.1 accept a ``$share/g/t`` subscription with a success SUBACK and treat it as
a literal topic, so nothing published to ``t`` ever reaches the worker and no component says why
(with a coordinator, every task is then "recovered" after the dispatch timeout, spending one of
its attempts). So the worker subscribes ``$share/{group}-probe/P/probe/{worker}`` beside its task
filters, publishes one message to ``P/probe/{worker}`` once connected, and waits for it: a group
of its own, so the probe cannot go to another member. Healthy brokers answer in a round trip; on
the others the worker warns in its log and on ``P/errors`` (docs/operations.md lists the brokers).
"""

from __future__ import annotations

import logging
import threading

from ..protocol.topics import Topics
from ..transport import Connection

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0


class ShareProbe:
    """One probe message through a shared subscription of this worker's own."""

    def __init__(self, conn: Connection, topics: Topics, worker_id: str, group: str) -> None:
        self._conn = conn
        self.topic = topics.probe(worker_id)
        self.filter = f"$share/{group}-probe/{self.topic}"
        self._arrived = threading.Event()

    def arm(self) -> None:
        """Subscribe with the task filters, before the connection is made."""
        self._conn.subscribe(self.filter)

    def arrived(self) -> None:
        """The network thread: the probe came back through the shared subscription."""
        self._arrived.set()

    def check(self, timeout: float = PROBE_TIMEOUT_S) -> bool:
        """Publish the probe and wait for it; unsubscribe either way. True: ``$share`` works."""
        self._conn.publish(self.topic, b"probe")
        try:
            return self._arrived.wait(timeout)
        finally:
            self._conn.unsubscribe(self.filter)
