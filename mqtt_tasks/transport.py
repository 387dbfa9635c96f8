"""The only module that imports paho: connect, publish, subscribe, acknowledge.

A ``Connection`` owns one paho client and its network thread. Callbacks on that thread never
block: incoming messages go to the owner's ``on_message`` (which decides quickly, as the worker
does, or enqueues, as the coordinator does), acks of our publishes resolve the outstanding set
that ``flush`` waits on. Every paho failure is
translated here into an exception of ``mqtt_tasks.errors``.

Facts this module is built on (../shared/BROKER-FACTS.md): subscriptions are not restored by
paho after a reconnect, so they are re-sent on every connect; an exception in a callback kills
the network thread, so every callback is wrapped; message ids restart after a reconnect, so an
ack from an older connection is dropped; Nagle's algorithm costs ~40 ms a round trip, so
TCP_NODELAY is set after every connect; amqtt refuses MQTT 5 CONNECTs, so ``protocol="auto"``
falls back to 3.1.1.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from .config import Settings
from .errors import ConnectError, PayloadTooLargeError, TransportError

log = logging.getLogger(__name__)

_UNSUPPORTED_PROTOCOL = {1, 132}  # 3.1.1 CONNACK code 1 / MQTT 5 reason 0x84
# Sent, or kept by paho and sent after the reconnect (QoS 1); a QoS 0 publish in those cases is simply lost.
_QUEUED_OR_SENT = (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN, paho.MQTT_ERR_CONN_LOST)
_BAD_AUTH = {4, 5, 134, 135, 140}
_PUBACK = 0x40
_PUBACK_PACKET = struct.Struct("!BBH")
_PUBACK_SUCCESS = ReasonCode(PacketTypes.PUBACK)  # what paho passes for a 2-byte PUBACK, made once
_PUBACK_NO_PROPERTIES = Properties(PacketTypes.PUBACK)


@dataclass(slots=True)
class Message:
    """An incoming message, free of paho types."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    generation: int
    response_topic: str | None = None
    correlation_data: bytes | None = None
    expiry: int | None = None


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    retain: bool = True
    qos: int = 1


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
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self._on_message_cb = on_message
        self._manual_ack = manual_ack
        self._session_expiry = session_expiry
        self._will = will
        self._receive_maximum = receive_maximum
        self._on_connect_cb = on_connect
        self._on_disconnect_cb = on_disconnect
        self._max_inflight = max_inflight
        self._buffered_reads = buffered_reads  # read plain TCP in 64 KiB chunks: see _BufferedSocket

        self._subscriptions: dict[str, int] = {}
        self._pending_subs: set[int] = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._outstanding: set[int] = set()
        self._early_acks: set[int] = set()
        self._generation = 0
        self._connack = threading.Event()
        self._connack_code: int | None = None
        self._connack_reason = ""
        self._ready = threading.Event()
        self._closed = False
        self.is_mqtt5 = settings.protocol != "3.1.1"
        self._client = self._make_client()

    # -- lifecycle --------------------------------------------------------------------
    def connect(self, timeout: float | None = None) -> Connection:
        """Connect, wait for CONNACK and for every remembered subscription to be granted."""
        timeout = self.settings.connect_timeout if timeout is None else timeout
        if self.settings.protocol == "auto" and self.is_mqtt5 and self._probe_refuses_mqtt5(timeout):
            log.info("broker %s refused MQTT 5; using MQTT 3.1.1", self.settings.display_url)
            self.is_mqtt5 = False
            self._client = self._make_client()
        code = self._connect_once(timeout)
        if code in _UNSUPPORTED_PROTOCOL and self.settings.protocol == "auto" and self.is_mqtt5:
            log.info("broker %s refused MQTT 5; using MQTT 3.1.1", self.settings.display_url)
            self._stop_loop()
            self.is_mqtt5 = False
            self._client = self._make_client()
            code = self._connect_once(timeout)
        if code != 0:
            self._stop_loop()
            self._raise_connack(code)
        if not self._ready.wait(timeout):
            raise ConnectError(f"subscriptions not granted by {self.settings.display_url} within {timeout}s",
                               url=self.settings.display_url, reason="suback timeout")
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
    def connected(self) -> bool:
        return self._client.is_connected()

    @property
    def generation(self) -> int:
        """Incremented on every successful connect."""
        return self._generation

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    # -- subscriptions ----------------------------------------------------------------
    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Remember the subscription; send it now if connected, and on every reconnect."""
        with self._lock:
            self._subscriptions[topic_filter] = qos
        if self.connected:
            self._send_subscriptions([(topic_filter, qos)])

    def unsubscribe(self, topic_filter: str) -> None:
        with self._lock:
            self._subscriptions.pop(topic_filter, None)
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
    ) -> int:
        """Queue a publish and return at once. QoS 1 publishes are tracked until PUBACK."""
        if len(payload) > self.settings.max_payload:
            raise PayloadTooLargeError(len(payload), self.settings.max_payload, topic=topic)
        props = None
        if self.is_mqtt5 and (response_topic or correlation_data is not None or expiry):
            props = Properties(PacketTypes.PUBLISH)
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation_data is not None:
                props.CorrelationData = correlation_data
            if expiry:
                props.MessageExpiryInterval = int(expiry)
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if info.rc not in _QUEUED_OR_SENT:
            raise TransportError(f"publish to {topic!r} failed: {paho.error_string(info.rc)}")
        with self._lock:
            if info.mid in self._early_acks:
                self._early_acks.discard(info.mid)
            elif qos > 0:
                self._outstanding.add(info.mid)
        return info.mid

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every QoS 1 publish so far is acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._outstanding:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

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
        return len(self._outstanding)

    def ack(self, message: Message) -> None:
        """Acknowledge a QoS 1 message taken with ``manual_ack``; acks from an older connection are dropped."""
        if not self._manual_ack or message.qos == 0:
            return
        if message.generation != self._generation:
            log.debug("dropping ack of mid %s from connection %s", message.mid, message.generation)
            return
        self._client.ack(message.mid, message.qos)

    def ack_many(self, messages: Iterable[Message]) -> None:
        """Acknowledge a batch of messages taken with ``manual_ack``, in one write.

        paho queues each PUBACK as its own packet, with a wake-up of its network thread and a
        ``send`` each; the coordinator acks hundreds per commit. Here they go as one buffer of
        PUBACK packets (3.1.1 and 5 alike: a 2-byte remaining length means reason Success).
        """
        if not self._manual_ack:
            return
        generation = self._generation
        mids = [m.mid for m in messages if m.qos == 1 and m.generation == generation]
        for message in messages:
            if message.qos == 2:
                self.ack(message)
        queue_packet = getattr(self._client, "_packet_queue", None)
        if queue_packet is None or len(mids) < 2:  # a paho without it, or nothing to gain
            for mid in mids:
                self._client.ack(mid, 1)
            return
        queue_packet(_PUBACK, b"".join(_PUBACK_PACKET.pack(_PUBACK, 2, mid) for mid in mids), 0, 0)

    # -- internals --------------------------------------------------------------------
    def _make_client(self) -> _Client:
        s = self.settings
        protocol = paho.MQTTv5 if self.is_mqtt5 else paho.MQTTv311
        kwargs: dict[str, Any] = {}
        if not self.is_mqtt5:
            kwargs["clean_session"] = self._session_expiry == 0
        client = _Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=protocol,
                         transport=s.transport, manual_ack=self._manual_ack, buffered_reads=self._buffered_reads,
                         **kwargs)
        self._configure(client)
        if self._will is not None:
            client.will_set(self._will.topic, self._will.payload, qos=self._will.qos, retain=self._will.retain)
        client.max_inflight_messages_set(self._max_inflight)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        client.on_connect = self._guard(self._handle_connect)
        client.on_disconnect = self._guard(self._handle_disconnect)
        client.on_message = self._guard(self._handle_message)
        client.on_publish_received = self._guard(self._deliver)  # QoS 0/1: paho's own decoding skipped
        client.on_publish = self._guard(self._handle_publish)
        client.on_subscribe = self._guard(self._handle_subscribe)
        return client

    def _probe_refuses_mqtt5(self, timeout: float) -> bool:
        """Ask with a bare MQTT 5 CONNECT whether the broker speaks MQTT 5.

        amqtt (3.1.1 only) answers a CONNECT without properties with "unsupported protocol
        version", but cannot parse one that carries properties (session expiry, receive maximum):
        it waits for bytes that never come and no CONNACK arrives. So the real CONNECT, with its
        properties and Last Will, is sent only once the broker has accepted a bare one.
        """
        answered = threading.Event()
        codes: list[int] = []

        def on_connect(client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
            codes.append(int(getattr(rc, "value", rc)))
            answered.set()

        probe = paho.Client(CallbackAPIVersion.VERSION2, client_id="", protocol=paho.MQTTv5,
                            transport=self.settings.transport, reconnect_on_failure=False)
        self._configure(probe)
        probe.on_connect = on_connect
        s = self.settings
        try:
            probe.connect(s.host, s.port, keepalive=s.keepalive)
        except (OSError, ValueError):
            return False  # the real connect reports the failure
        probe.loop_start()
        try:
            answered.wait(timeout)
        finally:
            probe.disconnect()
            probe.loop_stop()
        return bool(codes) and codes[0] in _UNSUPPORTED_PROTOCOL

    def _configure(self, client: paho.Client) -> None:
        """WebSocket path, TLS and credentials: what every client of these settings needs."""
        s = self.settings
        if s.transport == "websockets":
            client.ws_set_options(path=s.ws_path)
        if s.tls is not None:
            client.tls_set_context(s.tls.context())
            if s.tls.insecure:
                client.tls_insecure_set(True)
        if s.username is not None:
            client.username_pw_set(s.username, s.password)

    def _connect_once(self, timeout: float) -> int:
        self._connack.clear()
        self._connack_code = None
        props = None
        kwargs: dict[str, Any] = {}
        if self.is_mqtt5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self._session_expiry
            if self._receive_maximum:
                props.ReceiveMaximum = self._receive_maximum
            kwargs = {"clean_start": self._session_expiry == 0, "properties": props}
        s = self.settings
        try:
            self._client.connect(s.host, s.port, keepalive=s.keepalive, **kwargs)
        except ssl.SSLError as exc:  # before OSError, its base class
            raise ConnectError(f"TLS handshake with the MQTT broker at {s.display_url} failed: {exc}",
                               url=s.display_url, reason=str(exc)) from exc
        except (OSError, ValueError) as exc:
            raise ConnectError(f"cannot reach the MQTT broker at {s.display_url}: {exc}",
                               url=s.display_url, reason=str(exc)) from exc
        self._client.loop_start()
        self._set_thread_name()
        if not self._connack.wait(timeout):
            self._stop_loop()
            raise ConnectError(f"no CONNACK from {s.display_url} within {timeout}s",
                               url=s.display_url, reason="connack timeout")
        return self._connack_code or 0

    def _raise_connack(self, code: int) -> None:
        url = self.settings.display_url
        if code in _BAD_AUTH:
            raise ConnectError(f"the broker at {url} refused the credentials ({self._connack_reason})",
                               url=url, reason=self._connack_reason)
        raise ConnectError(f"the broker at {url} refused the connection: {self._connack_reason}",
                           url=url, reason=self._connack_reason)

    def _set_thread_name(self) -> None:
        thread = getattr(self._client, "_thread", None)
        if thread is not None:
            thread.name = f"mqtt-net-{self.client_id}"

    def _stop_loop(self) -> None:
        try:
            self._client.loop_stop()
        except RuntimeError as exc:  # called from the network thread itself
            log.debug("loop_stop: %s", exc)

    def _send_subscriptions(self, subs: list[tuple[str, int]]) -> None:
        if not subs:
            self._ready.set()
            return
        rc, mid = self._client.subscribe(subs)
        if rc == paho.MQTT_ERR_SUCCESS and mid is not None:
            with self._lock:
                self._pending_subs.add(mid)

    def _guard(self, fn: Callable[..., None]) -> Callable[..., None]:
        """An exception in a paho callback kills its thread: log it and carry on instead."""
        def wrapper(*args: Any) -> None:
            try:
                fn(*args)
            except Exception:
                log.exception("error in MQTT callback %s of %s", fn.__name__, self.client_id)
        return wrapper

    def _handle_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        code = int(getattr(rc, "value", rc))
        self._connack_code = code
        self._connack_reason = str(rc)
        if code != 0:
            log.warning("%s: connection refused by %s: %s", self.client_id, self.settings.display_url, rc)
            self._connack.set()
            return
        self._set_nodelay()
        # MQTT 5: never more unacknowledged QoS 1 publishes than the broker's Receive Maximum
        # (paho ignores it; EMQX and HiveMQ disconnect a client that exceeds it). A small window
        # is also cheaper: paho scans the whole window on every PUBACK while messages queue.
        server_max = getattr(props, "ReceiveMaximum", None) if props is not None else None
        window = min(self._max_inflight, server_max or self._max_inflight)
        if hasattr(client, "_max_inflight_messages"):  # paho's setter refuses while connected
            client._max_inflight_messages = window
        with self._lock:
            self._generation += 1
            first = self._generation == 1
            self._pending_subs.clear()
            subs = list(self._subscriptions.items())
        self._ready.clear()
        self._send_subscriptions(subs)
        log.info("%s connected to %s (MQTT %s)", self.client_id, self.settings.display_url,
                 "5" if self.is_mqtt5 else "3.1.1")
        self._connack.set()
        if self._on_connect_cb is not None:
            self._on_connect_cb(first)

    def _set_nodelay(self) -> None:
        sock: Any = self._client.socket()
        try:
            raw = getattr(sock, "_socket", sock)  # the WebSocket wrapper keeps the socket inside
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError) as exc:
            log.debug("TCP_NODELAY not set: %s", exc)

    def _handle_disconnect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._ready.clear()
        if not self._closed:
            log.warning("%s lost its connection to %s (%s); reconnecting", self.client_id,
                        self.settings.display_url, rc)
        if self._on_disconnect_cb is not None:
            self._on_disconnect_cb(str(rc))

    def _handle_subscribe(self, client: paho.Client, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        for code in codes:
            if int(getattr(code, "value", code)) >= 0x80:
                log.error("%s: subscription refused by the broker: %s", self.client_id, code)
        with self._lock:
            self._pending_subs.discard(mid)
            done = not self._pending_subs
        if done:
            self._ready.set()

    def _handle_publish(self, client: paho.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        code = int(getattr(rc, "value", rc) or 0)
        if code >= 0x80:
            log.error("%s: broker rejected publish mid %s: %s", self.client_id, mid, rc)
        with self._idle:
            if mid in self._outstanding:
                self._outstanding.discard(mid)
                if not self._outstanding:
                    self._idle.notify_all()
            else:
                self._early_acks.add(mid)

    def _handle_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self._deliver(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), msg.mid,
                      getattr(msg, "properties", None))

    def _deliver(self, topic: str, payload: bytes, qos: int, retain: bool, mid: int, props: Any) -> None:
        if self._on_message_cb is None:
            return
        if props is None:
            self._on_message_cb(Message(topic, payload, qos, retain, mid, self._generation))
            return
        self._on_message_cb(Message(topic, payload, qos, retain, mid, self._generation,
                                    getattr(props, "ResponseTopic", None), getattr(props, "CorrelationData", None),
                                    getattr(props, "MessageExpiryInterval", None)))


# -- reading many packets per wake-up -------------------------------------------------------------
READ_CHUNK = 65536
READ_BUDGET = 256
"""Packets one ``loop_read`` handles at most before paho's loop gets to write (acks) again."""


class _BufferedSocket:
    """A plain TCP socket read in 64 KiB chunks, served to paho in the small pieces it asks for.

    paho reads every packet with at least three ``recv`` calls (the command byte, each byte of
    the remaining length, then the body), each a system call on a plain socket. Here a chunk
    holding many packets costs one; ``pending()`` tells paho's loop, as it does for TLS sockets,
    that bytes are buffered and select() must not wait for the socket.
    """

    __slots__ = ("_sock", "_buf", "_pos")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, size: int) -> bytes:
        if self._pos < len(self._buf):
            chunk = self._buf[self._pos:self._pos + size]
            self._pos += len(chunk)
            return chunk
        data = self._sock.recv(READ_CHUNK)  # BlockingIOError when nothing is there, as before
        if len(data) <= size:
            return data
        self._buf, self._pos = data, size
        return data[:size]

    def pending(self) -> int:
        return len(self._buf) - self._pos

    def __getattr__(self, name: str) -> Any:  # send, fileno, close, setsockopt, ...: the socket's own
        return getattr(self._sock, name)


class _Client(paho.Client):
    """paho's client with fewer system calls and thread wake-ups per message.

    - Reads: with ``buffered_reads``, plain TCP is read through ``_BufferedSocket``, and every
      packet that arrived together is handled in one pass (paho's ``loop_read`` handles one per
      select() unless it has messages of its own in flight).
    - Writes: paho wakes its network thread (one byte through a socket pair, then a select())
      for every packet queued from any thread. Here a packet queued behind others that are not
      yet written needs no wake-up of its own (the network thread writes its queue until it is
      empty), a packet the network thread queues itself is written by it without one, and
      ``held_writes()`` lets one thread queue several packets behind a single wake-up.
    - Incoming QoS 0 and 1 PUBLISH packets, with ``on_publish_received`` set, are decoded here and
      handed to it as plain values: paho's generic path builds a ``PublishPacket``, an
      ``MQTTMessage``, a ``Properties`` object even when the packet has none, formats struct
      strings and matches the topic against per-topic callbacks, about a fifth of the CPU a
      small message costs. QoS 2, MQTT 5 topic aliases (an empty topic) and malformed packets
      take paho's own path, which handles or rejects them as before.
    - A PUBACK of success without properties (2 bytes: every PUBACK of a 3.1.1 broker, and of an
      MQTT 5 one that accepted the message) skips paho's decoding into fresh ``ReasonCode`` and
      ``Properties`` objects; what follows (``on_publish``, the in-flight window) is paho's.
    """

    on_publish_received: Callable[[str, bytes, int, bool, int, Properties | None], None] | None = None

    def __init__(self, *args: Any, buffered_reads: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._buffered_reads = buffered_reads
        self._holding = threading.local()

    def _create_socket(self) -> Any:
        sock = super()._create_socket()
        return _BufferedSocket(sock) if self._buffered_reads and type(sock) is socket.socket else sock

    def loop_read(self, max_packets: int = 1) -> paho.MQTTErrorCode:
        rc = self._read_buffered() if self._buffered_reads else super().loop_read(max_packets)
        if rc == paho.MQTTErrorCode.MQTT_ERR_SUCCESS and self._out_packet and self._sock is not None:
            return self.loop_write()  # acks and released publishes, without another select()
        return rc

    def _read_buffered(self) -> paho.MQTTErrorCode:
        for _ in range(READ_BUDGET):
            if self._sock is None:
                return paho.MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == paho.MQTTErrorCode.MQTT_ERR_AGAIN:
                break
        return paho.MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_publish(self) -> paho.MQTTErrorCode:
        handler = self.on_publish_received
        if handler is None:
            return super()._handle_publish()
        decoded = _decode_publish(self._in_packet["command"], self._in_packet["packet"], self._protocol == paho.MQTTv5)
        if decoded is None:  # QoS 2, an empty topic (an alias, or malformed), bad UTF-8, truncated
            return super()._handle_publish()
        with self._in_callback_mutex:
            try:
                handler(*decoded)
            except Exception as err:
                self._easy_log(paho.MQTT_LOG_ERR, "Caught exception in on_publish_received: %s", err)
                if not self.suppress_exceptions:
                    raise
        if decoded[2] == 1 and not self._manual_ack:
            return self._send_puback(decoded[4])
        return paho.MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_pubackcomp(self, cmd: Any) -> paho.MQTTErrorCode:
        packet = self._in_packet["packet"]
        if cmd != "PUBACK" or len(packet) != 2:
            return super()._handle_pubackcomp(cmd)
        mid = (packet[0] << 8) | packet[1]
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, _PUBACK_SUCCESS, _PUBACK_NO_PROPERTIES)
        return paho.MQTTErrorCode.MQTT_ERR_SUCCESS

    def _packet_queue(self, command: int, packet: bytes | bytearray, mid: int, qos: int,
                      info: paho.MQTTMessageInfo | None = None) -> paho.MQTTErrorCode:
        thread = self._thread
        if thread is None or self._sockpairW is None:  # no network thread: paho writes at once
            return super()._packet_queue(command, packet, mid, qos, info)
        out = self._out_packet
        out.append({"command": command, "mid": mid, "qos": qos, "pos": 0, "to_process": len(packet),
                    "packet": packet, "info": info})
        # len > 1: a packet ahead of this one is unwritten, and the network thread writes the
        # queue until it is empty (or, if the socket is full, selects for writing while any is left).
        if len(out) == 1 and threading.get_ident() != thread.ident and not getattr(self._holding, "on", False):
            self._wake()
        return paho.MQTTErrorCode.MQTT_ERR_SUCCESS

    def _wake(self) -> None:
        pair = self._sockpairW  # None once the client is closed
        if pair is not None:
            with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed
                pair.send(b"0")

    @contextlib.contextmanager
    def held_writes(self) -> Iterator[None]:
        """Packets this thread queues inside the block cost the network thread one wake-up."""
        if getattr(self._holding, "on", False):
            yield
            return
        self._holding.on = True
        try:
            yield
        finally:
            self._holding.on = False
            if self._out_packet and self._thread is not None and threading.get_ident() != self._thread.ident:
                self._wake()


def _decode_publish(command: int, packet: bytearray,
                    mqtt5: bool) -> tuple[str, bytes, int, bool, int, Properties | None] | None:
    """A QoS 0/1 PUBLISH as (topic, payload, qos, retain, mid, properties or None); None for
    anything paho's own decoding must handle or reject."""
    qos = (command & 0x06) >> 1
    if qos == 2 or len(packet) < 2:
        return None
    pos = 2 + ((packet[0] << 8) | packet[1])
    if pos == 2 or len(packet) < pos + 2 * (qos == 1) + mqtt5:
        return None
    try:
        topic = packet[2:pos].decode("utf-8")
    except UnicodeDecodeError:
        return None
    mid = 0
    if qos:
        mid = (packet[pos] << 8) | packet[pos + 1]
        pos += 2
    props = None
    if mqtt5:
        if packet[pos] == 0:  # no properties: the usual case
            pos += 1
        else:
            props = Properties(PacketTypes.PUBLISH)
            try:
                _, length = props.unpack(packet[pos:])
            except Exception:  # noqa: BLE001 - malformed: paho's path rejects it its own way
                return None
            pos += length
    return topic, bytes(memoryview(packet)[pos:]), qos, bool(command & 0x01), mid, props
