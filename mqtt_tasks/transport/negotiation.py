"""What is agreed with the broker at connect: protocol version, TLS, credentials, session, Will.

``build_client`` makes the paho client for a ``ClientOptions`` and ``Settings`` (WebSocket path,
TLS context, credentials, Last Will, windows); ``start_connect`` sends the CONNECT; ``Connack``
carries the answer back from the network thread; ``refused`` turns a refusal into a
``ConnectError``. With ``protocol="auto"``, ``probe_refuses_mqtt5`` first asks whether the broker
speaks MQTT 5, and the connection falls back to 3.1.1 if not.

Every failure here is translated once into ``mqtt_tasks.errors``: a bad option (an invalid Will
topic, a negative window or keep-alive, a bad TLS file) is a ``ConfigError``; a broker that cannot
be reached, a failed TLS handshake, a refusal or no answer is a ``ConnectError``.

Facts this module is built on (docs/broker-facts.md): amqtt refuses MQTT 5 CONNECTs, and
cannot even parse one that carries properties, so ``auto`` probes with a bare CONNECT first; for
3.1.1, ``clean_session`` goes to the client's constructor and ``connect()`` refuses MQTT 5
arguments; paho sends Receive Maximum only if it is set in the CONNECT properties, and ignores
the server's: the send window is capped at the broker's Receive Maximum here (EMQX and HiveMQ
disconnect a client that exceeds it); QoS 1 publishes made while disconnected are queued by paho
in memory, so its queue is unbounded (``max_queued_messages_set(0)``).
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..config import Settings
from ..errors import ConfigError, ConnectError
from .messages import Will
from .paho_internals import TunedClient

log = logging.getLogger(__name__)

UNSUPPORTED_PROTOCOL = {1, 132}  # 3.1.1 CONNACK code 1 / MQTT 5 reason 0x84
_BAD_AUTH = {4, 5, 134, 135, 140}


@dataclass(frozen=True)
class ClientOptions:
    """A connection's own part of the CONNECT, beside the shared ``Settings``."""

    client_id: str
    manual_ack: bool = False
    session_expiry: int = 0
    will: Will | None = None
    receive_maximum: int | None = None
    max_inflight: int = 1000
    buffered_reads: bool = True


def build_client(settings: Settings, options: ClientOptions, mqtt5: bool) -> TunedClient:
    """A paho client set up for these settings and options; callbacks are the caller's to set."""
    kwargs: dict[str, Any] = {}
    if not mqtt5:
        kwargs["clean_session"] = options.session_expiry == 0
    try:
        client = TunedClient(CallbackAPIVersion.VERSION2, client_id=options.client_id,
                             protocol=paho.MQTTv5 if mqtt5 else paho.MQTTv311, transport=settings.transport,
                             manual_ack=options.manual_ack, buffered_reads=options.buffered_reads, **kwargs)
        configure(client, settings)
        will = options.will
        if will is not None:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        client.max_inflight_messages_set(options.max_inflight)
    except ConfigError:  # a bad TLS file, from settings.tls.context(): already ours
        raise
    except ValueError as exc:  # paho's word for a bad option
        raise ConfigError(f"invalid MQTT client option for {options.client_id!r}: {exc}") from exc
    client.max_queued_messages_set(0)
    client.reconnect_delay_set(min_delay=1, max_delay=5)
    return client


def configure(client: paho.Client, settings: Settings) -> None:
    """WebSocket path, TLS and credentials: what every client of these settings needs."""
    if settings.transport == "websockets":
        client.ws_set_options(path=settings.ws_path)
    if settings.tls is not None:
        client.tls_set_context(settings.tls.context())  # a bad TLS file: ConfigError
        if settings.tls.insecure:
            client.tls_insecure_set(True)
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.password)


def connect_arguments(options: ClientOptions, mqtt5: bool) -> dict[str, Any]:
    """The MQTT 5 arguments of ``connect()``: clean start, session expiry, Receive Maximum."""
    if not mqtt5:
        return {}
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = options.session_expiry
    if options.receive_maximum:
        props.ReceiveMaximum = options.receive_maximum
    return {"clean_start": options.session_expiry == 0, "properties": props}


def start_connect(client: paho.Client, settings: Settings, arguments: dict[str, Any]) -> None:
    """Open the socket and send the CONNECT; the CONNACK arrives on the network thread."""
    url = settings.display_url
    try:
        client.connect(settings.host, settings.port, keepalive=settings.keepalive, **arguments)
    except ssl.SSLError as exc:  # before OSError, its base class
        raise ConnectError(f"TLS handshake with the MQTT broker at {url} failed: {exc}",
                           url=url, reason=str(exc)) from exc
    except OSError as exc:
        raise ConnectError(f"cannot reach the MQTT broker at {url}: {exc}", url=url, reason=str(exc)) from exc
    except ValueError as exc:  # paho refuses the host, port or keep-alive before any I/O
        raise ConfigError(f"invalid connection settings for the MQTT broker at {url}: {exc}") from exc


def send_window(max_inflight: int, connack_props: Any) -> int:
    """MQTT 5: never more unacknowledged QoS 1 publishes than the broker's Receive Maximum.

    paho ignores it; EMQX and HiveMQ disconnect a client that exceeds it. A small window is also
    cheaper: paho scans the whole window on every PUBACK while messages queue.
    """
    server_max = getattr(connack_props, "ReceiveMaximum", None) if connack_props is not None else None
    return min(max_inflight, server_max or max_inflight)


class Connack:
    """The broker's answer to our CONNECT, handed from the network thread to ``connect``."""

    def __init__(self) -> None:
        self._answered = threading.Event()
        self.code: int | None = None
        self.reason = ""

    def reset(self) -> None:
        self._answered.clear()
        self.code = None

    def record(self, rc: Any) -> int:
        """Keep the reason code (a paho ``ReasonCode`` or an int); return it as an int."""
        code = int(getattr(rc, "value", rc))
        self.code = code
        self.reason = str(rc)
        return code

    def answered(self) -> None:
        self._answered.set()

    def wait(self, timeout: float) -> bool:
        return self._answered.wait(timeout)


def refused(code: int, reason: str, url: str) -> ConnectError:
    """The error for a CONNACK that refused the connection."""
    if code in _BAD_AUTH:
        return ConnectError(f"the broker at {url} refused the credentials ({reason})", url=url, reason=reason)
    return ConnectError(f"the broker at {url} refused the connection: {reason}", url=url, reason=reason)


def probe_refuses_mqtt5(settings: Settings, timeout: float) -> bool:
    """Ask with a bare MQTT 5 CONNECT whether the broker speaks MQTT 5.

    A broker that refuses it (CONNACK "unsupported protocol version") or closes the connection
    without any CONNACK (RabbitMQ 3.10's MQTT plugin does) does not. amqtt (3.1.1 only) answers a
    CONNECT without properties with "unsupported protocol version", but cannot parse one that
    carries properties (session expiry, receive maximum): it waits for bytes that never come and
    no CONNACK arrives. So the real CONNECT, with its properties and Last Will, is sent only once
    the broker has accepted a bare one.
    """
    answered = threading.Event()
    codes: list[int] = []
    closed: list[bool] = []

    def on_connect(client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        codes.append(int(getattr(rc, "value", rc)))
        answered.set()

    def on_disconnect(client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if not codes:  # closed on us with no CONNACK: RabbitMQ 3.x's answer to an MQTT 5 CONNECT
            closed.append(True)
            answered.set()

    probe = paho.Client(CallbackAPIVersion.VERSION2, client_id="", protocol=paho.MQTTv5,
                        transport=settings.transport, reconnect_on_failure=False)
    configure(probe, settings)
    probe.on_connect = on_connect
    probe.on_disconnect = on_disconnect
    try:
        probe.connect(settings.host, settings.port, keepalive=settings.keepalive)
    except (OSError, ValueError):
        return False  # the real connect reports the failure
    probe.loop_start()
    try:
        answered.wait(timeout)
    finally:
        probe.disconnect()
        probe.loop_stop()
    if closed:
        log.info("%s closed the connection on an MQTT 5 CONNECT without answering it: trying MQTT 3.1.1",
                 settings.display_url)
        return True
    return bool(codes) and codes[0] in UNSUPPORTED_PROTOCOL
