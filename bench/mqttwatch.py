"""Watch a topic filter with a plain paho client: the bench's way of seeing retained state
(coordinator presence, worker heartbeats) without going through the code under test."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any


class Watch:
    """Subscribe to ``topic_filter``; ``wait(pred, timeout)`` returns the first payload (as JSON)
    for which ``pred(topic, payload)`` holds, stamped with ``time.perf_counter()``."""

    def __init__(self, url: str, topic_filter: str) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        from bench.procs import _host_port

        self._cond = threading.Condition()
        self._seen: list[tuple[float, str, Any]] = []
        subscribed = threading.Event()
        c = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        c.on_connect = lambda cl, *a: cl.subscribe(topic_filter, qos=1)
        c.on_subscribe = lambda *a: subscribed.set()
        c.on_message = self._on_message
        host, port = _host_port(url)
        c.connect(host, port, keepalive=30)
        c.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError(f"watch on {topic_filter}: no SUBACK")
        self.client = c

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            payload = json.loads(msg.payload) if msg.payload else None
        except ValueError:
            payload = None
        with self._cond:
            self._seen.append((time.perf_counter(), msg.topic, payload))
            del self._seen[:-1000]
            self._cond.notify_all()

    def wait(self, pred: Callable[[str, Any], bool], timeout: float, since: float = 0.0) -> float | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for stamp, topic, payload in self._seen:
                    if stamp >= since and pred(topic, payload):
                        return stamp
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def online(topic: str, payload: Any) -> bool:
    return isinstance(payload, dict) and payload.get("state") == "online"
