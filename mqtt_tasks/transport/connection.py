"""The ``Connection`` facade: one MQTT connection, composed of the parts beside it.

A ``Connection`` owns one paho client (``paho_internals.TunedClient``) and its network thread,
and wires that thread's callbacks to its parts: ``negotiation`` (the CONNECT and its answer),
``subscriptions`` (re-sent on every connect), ``inflight`` (our publishes until PUBACK, received
messages until acked). Callbacks never block: incoming messages go to the owner's
``on_message`` (which decides quickly, as the worker does, or enqueues, as the coordinator
does), acks of our publishes resolve the outstanding set that ``flush`` waits on.

Facts this module is built on (docs/broker-facts.md): an exception in a paho callback kills
the network thread while ``is_connected()`` still says True, so every callback is wrapped
(``guard``); ``loop_start`` reconnects on its own, with ``reconnect_delay_set`` backoff, so
``on_connect`` redoes per-connection work (TCP_NODELAY, the send window, subscriptions); with
QoS 1 publishes queued while disconnected, ``wait_for_publish`` is unreliable, so delivery is
tracked with ``on_publish`` (inflight.py).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..config import Settings
from ..errors import ConnectError, PayloadTooLargeError, TransportError
from .inflight import Inflight
from .messages import Message, Will
from .negotiation import (
    UNSUPPORTED_PROTOCOL,
    ClientOptions,
    Connack,
    build_client,
    connect_arguments,
    probe_refuses_mqtt5,
    refused,
    send_window,
    start_connect,
)
from .paho_internals import TunedClient
from .subscriptions import Subscriptions

log = logging.getLogger(__name__)

# Sent, or kept by paho and sent after the reconnect (QoS 1); a QoS 0 publish in those cases is simply lost.
_QUEUED_OR_SENT = (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN, paho.MQTT_ERR_CONN_LOST)


def guard(fn: Callable[..., None], client_id: str) -> Callable[..., None]:
    """An exception in a paho callback kills its thread: log it and carry on instead."""
    def wrapper(*args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("error in MQTT callback %s of %s", fn.__name__, client_id)
    return wrapper


class Connection:
    """One MQTT connection with remembered subscriptions and tracked publishes."""

    def __init__(
        self,
        settings: Settings,
        client_id: str,
        *,
        on_message: Callable[[Message], None] | None = None,
        manual_ack: bool = False,
        session_expiry: int = 0,
        will: Will | None = None,
        receive_maximum: int | None = None,
        on_connect: Callable[[bool], None] | None = None,
        on_disconnect: Callable[[str], None] | None = None,
        max_inflight: int = 1000,
        buffered_reads: bool = True,
        on_rejected: Callable[[int, str], None] | None = None,
    ) -> None:
        """``on_rejected(mid, reason)``: the broker refused a QoS 1 publish (an MQTT 5 PUBACK reason
        code >= 0x80, e.g. "Not authorized" by its ACL); called on the network thread, only hand off.
        Without it the refusal is logged as an error."""
        self.settings = settings
        self.client_id = client_id
        # buffered_reads: read plain TCP in 64 KiB chunks (paho_internals.BufferedSocket)
        self._options = ClientOptions(client_id, manual_ack, session_expiry, will, receive_maximum, max_inflight,
                                      buffered_reads)
        self._on_connect_cb = on_connect
        self._on_disconnect_cb = on_disconnect
        self._subscriptions = Subscriptions(client_id)
        self._inflight = Inflight(client_id, manual_ack=manual_ack, on_message=on_message, on_rejected=on_rejected)
        self._connack = Connack()
        self._closed = False
        self.session_present = False  # the last CONNACK's flag: the broker still had our session
        self.is_mqtt5 = settings.protocol != "3.1.1"
        self._client = self._make_client()

    # -- lifecycle --------------------------------------------------------------------
    def connect(self, timeout: float | None = None) -> Connection:
        """Connect, wait for CONNACK and for every remembered subscription to be granted."""
        timeout = self.settings.connect_timeout if timeout is None else timeout
        auto = self.settings.protocol == "auto"
        if auto and self.is_mqtt5 and probe_refuses_mqtt5(self.settings, timeout):
            self._fall_back_to_mqtt311()
        code = self._connect_once(timeout)
        if code in UNSUPPORTED_PROTOCOL and auto and self.is_mqtt5:
            self._stop_loop()
            self._fall_back_to_mqtt311()
            code = self._connect_once(timeout)
        url = self.settings.display_url
        if code != 0:
            self._stop_loop()
            raise refused(code, self._connack.reason, url)
        if not self._subscriptions.wait_ready(timeout):
            raise ConnectError(f"subscriptions not granted by {url} within {timeout}s",
                               url=url, reason="suback timeout")
        denied = dict(self._subscriptions.refused)
        if denied:
            self.close(flush_timeout=1.0)
            listed = ", ".join(f"{f} ({code})" for f, code in denied.items())
            raise ConnectError(f"the broker at {url} refused the subscription to {listed}: check its ACL "
                               f"for user {self.settings.username or '(anonymous)'}", url=url,
                               reason="subscription refused")
        return self

    def close(self, flush_timeout: float = 5.0) -> None:
        """Wait for outstanding publishes (bounded), disconnect cleanly, stop the thread."""
        if self._closed:
            return
        if self.connected:
            self.flush(flush_timeout)
        self._closed = True
        try:
            self._client.disconnect()
        except (OSError, ValueError) as exc:
            log.debug("disconnect of %s failed: %s", self.client_id, exc)
        self._stop_loop()

    def abort(self) -> None:
        """Drop the connection without DISCONNECT, so the broker sends the Last Will (tests, crash paths)."""
        self._closed = True
        sock: Any = self._client.socket()
        self._client.loop_stop()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            except OSError:
                log.debug("socket of %s already closed", self.client_id)

    @property
    def closed(self) -> bool:
        """True once ``close`` or ``abort`` began: no reconnect is expected after it."""
        return self._closed

    @property
    def connected(self) -> bool:
        return self._client.is_connected()

    @property
    def generation(self) -> int:
        """Incremented on every successful connect."""
        return self._inflight.generation

    def wait_ready(self, timeout: float) -> bool:
        return self._subscriptions.wait_ready(timeout)

    # -- subscriptions ----------------------------------------------------------------
    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Remember the subscription; send it now if connected, and on every reconnect."""
        self._subscriptions.remember(topic_filter, qos)
        if self.connected:
            self._subscriptions.send(self._client, [(topic_filter, qos)])

    def unsubscribe(self, topic_filter: str) -> None:
        self._subscriptions.forget(topic_filter)
        if self.connected:
            self._client.unsubscribe(topic_filter)

    # -- publishing -------------------------------------------------------------------
    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        expiry: int | None = None,
        user_properties: Sequence[tuple[str, str]] | None = None,
    ) -> int:
        """Queue a publish and return at once. QoS 1 publishes are tracked until PUBACK.
        The MQTT 5 properties are left out over MQTT 3.1.1."""
        if len(payload) > self.settings.max_payload:
            raise PayloadTooLargeError(len(payload), self.settings.max_payload, topic=topic)
        props = None
        if self.is_mqtt5 and (response_topic or correlation_data is not None or expiry or user_properties):
            props = Properties(PacketTypes.PUBLISH)
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation_data is not None:
                props.CorrelationData = correlation_data
            if expiry:
                props.MessageExpiryInterval = int(expiry)
            if user_properties:
                props.UserProperty = list(user_properties)
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if info.rc not in _QUEUED_OR_SENT:
            raise TransportError(f"publish to {topic!r} failed: {paho.error_string(info.rc)}")
        self._inflight.sent(info.mid, qos)
        return info.mid

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every QoS 1 publish so far is acknowledged; False on timeout."""
        return self._inflight.wait_idle(timeout)

    def held_writes(self) -> contextlib.AbstractContextManager[None]:
        """Publishes and acks queued by this thread inside the block go out behind one wake-up
        of the network thread (e.g. a worker's status event and reply)."""
        return self._client.held_writes()

    @property
    def send_window(self) -> int:
        """QoS 1 publishes that may be unacknowledged at once: the configured ``max_inflight``,
        or the broker's MQTT 5 Receive Maximum when that is smaller."""
        return int(self._client.max_inflight_messages)

    @property
    def outstanding(self) -> int:
        return self._inflight.outstanding

    def ack(self, message: Message) -> None:
        """Acknowledge a QoS 1 message taken with ``manual_ack``; acks from an older connection are dropped."""
        self._inflight.ack(self._client, message)

    def ack_many(self, messages: Iterable[Message]) -> None:
        """Acknowledge a batch of messages taken with ``manual_ack``, in one write.

        paho queues each PUBACK as its own packet, with a wake-up of its network thread and a
        ``send`` each; the coordinator acks hundreds per commit. Here they go as one buffer of
        PUBACK packets (3.1.1 and 5 alike: a 2-byte remaining length means reason Success).
        """
        self._inflight.ack_many(self._client, messages)

    # -- internals --------------------------------------------------------------------
    def _make_client(self) -> TunedClient:
        client = build_client(self.settings, self._options, self.is_mqtt5)
        client.on_connect = guard(self._handle_connect, self.client_id)
        client.on_disconnect = guard(self._handle_disconnect, self.client_id)
        client.on_message = guard(self._inflight.on_paho_message, self.client_id)
        client.on_publish_received = guard(self._inflight.deliver, self.client_id)  # QoS 0/1: paho's decoding skipped
        client.on_publish = guard(self._inflight.on_puback, self.client_id)
        client.on_subscribe = guard(self._subscriptions.on_suback, self.client_id)
        return client

    def _fall_back_to_mqtt311(self) -> None:
        log.info("broker %s refused MQTT 5; using MQTT 3.1.1", self.settings.display_url)
        self.is_mqtt5 = False
        self._client = self._make_client()

    def _connect_once(self, timeout: float) -> int:
        self._connack.reset()
        start_connect(self._client, self.settings, connect_arguments(self._options, self.is_mqtt5))
        self._client.loop_start()
        self._client.name_thread(f"mqtt-net-{self.client_id}")
        if not self._connack.wait(timeout):
            self._stop_loop()
            url = self.settings.display_url
            raise ConnectError(f"no CONNACK from {url} within {timeout}s", url=url, reason="connack timeout")
        return self._connack.code or 0

    def _stop_loop(self) -> None:
        try:
            self._client.loop_stop()
        except RuntimeError as exc:  # called from the network thread itself
            log.debug("loop_stop: %s", exc)

    def _handle_connect(self, client: TunedClient, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if self._connack.record(rc) != 0:
            log.warning("%s: connection refused by %s: %s", self.client_id, self.settings.display_url, rc)
            self._connack.answered()
            return
        self.session_present = bool(getattr(flags, "session_present", False))
        client.set_nodelay()
        client.set_send_window(send_window(self._options.max_inflight, props))
        first = self._inflight.new_connection()
        self._subscriptions.resend_all(client)
        log.info("%s connected to %s (MQTT %s)", self.client_id, self.settings.display_url,
                 "5" if self.is_mqtt5 else "3.1.1")
        self._connack.answered()
        if self._on_connect_cb is not None:
            self._on_connect_cb(first)

    def _handle_disconnect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._subscriptions.lost()
        if not self._closed:
            log.warning("%s lost its connection to %s (%s); reconnecting", self.client_id,
                        self.settings.display_url, rc)
        if self._on_disconnect_cb is not None:
            self._on_disconnect_cb(str(rc))
