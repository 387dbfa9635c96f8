"""Remembered subscriptions: sent when made, sent again on every connect, granted before ready.

``Subscriptions`` keeps every topic filter the owner asked for with its QoS. On each connect all
of them go out in one SUBSCRIBE; the connection is *ready* once every SUBSCRIBE sent since that
connect is answered by a SUBACK (``wait_ready``), which ``Connection.connect`` waits for so that
nothing published after it returns can miss this client.

Facts this module is built on (docs/broker-facts.md): paho does not restore subscriptions
after a reconnect, and Mosquitto 2.0.11 does not restore durable ``$share`` subscriptions after
a restart with persistence, so every remembered subscription is re-sent on every connect; a
refused filter (SUBACK code >= 0x80, e.g. an ACL that denies it) gets nothing delivered, so it is
kept in ``refused`` and ``Connection.connect`` fails with a ``ConnectError`` naming it, instead of
reporting ready (a worker would otherwise wait for tasks that can never come).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import paho.mqtt.client as paho

log = logging.getLogger(__name__)


class Subscriptions:
    """Topic filters to hold on every connection, and the SUBACKs still awaited on this one."""

    def __init__(self, client_id: str) -> None:
        self._client_id = client_id
        self._lock = threading.Lock()
        self._filters: dict[str, int] = {}
        self._pending: dict[int, list[str]] = {}  # mids of SUBSCRIBEs not yet answered -> their filters
        self._ready = threading.Event()
        self.refused: dict[str, str] = {}  # filter -> the broker's reason code, on this connection

    def remember(self, topic_filter: str, qos: int) -> None:
        with self._lock:
            self._filters[topic_filter] = qos

    def forget(self, topic_filter: str) -> None:
        with self._lock:
            self._filters.pop(topic_filter, None)

    def send(self, client: paho.Client, subs: list[tuple[str, int]]) -> None:
        """SUBSCRIBE to ``subs`` now, and count its SUBACK as awaited."""
        if not subs:
            self._ready.set()
            return
        rc, mid = client.subscribe(subs)
        if rc == paho.MQTT_ERR_SUCCESS and mid is not None:
            with self._lock:
                self._pending[mid] = [topic_filter for topic_filter, _ in subs]

    def resend_all(self, client: paho.Client) -> None:
        """A new connection: nothing is granted on it yet; subscribe to every remembered filter."""
        with self._lock:
            self._pending.clear()
            self.refused.clear()
            subs = list(self._filters.items())
        self._ready.clear()
        self.send(client, subs)

    def lost(self) -> None:
        """The connection dropped: not ready until the next connect's SUBACKs."""
        self._ready.clear()

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def on_suback(self, client: paho.Client, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        with self._lock:
            filters = self._pending.pop(mid, [])
            for topic_filter, code in zip(filters, codes, strict=False):
                if int(getattr(code, "value", code)) >= 0x80:
                    self.refused[topic_filter] = str(code)
                    log.error("%s: the broker refused the subscription to %s: %s", self._client_id, topic_filter,
                              code)
            done = not self._pending
        if done:
            self._ready.set()
