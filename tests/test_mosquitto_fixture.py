"""The Mosquitto test helpers work, and the shipped mosquitto.conf does what it promises.

Plain paho-mqtt clients only (no mqtt_tasks code), so a failure here points at the helpers, the
config or the broker, never at the library.
"""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests import brokers, conftest
from tests.brokers import (
    SHIPPED_CONF,
    MosquittoError,
    MosquittoProcess,
    build_config,
    find_mosquitto,
    wait_until,
)
from tests.conftest import MosquittoFactory

TIMEOUT_S = 5.0
PROTOCOLS = {"mqtt311": mqtt.MQTTv311, "mqtt5": mqtt.MQTTv5}


class Peer:
    """A paho client whose callbacks only record events; the test thread waits on them."""

    def __init__(self, port: int, client_id: str, *, protocol: MQTTProtocolVersion, persistent: bool) -> None:
        self.port = port
        self.protocol = protocol
        self.persistent = persistent
        kwargs: dict[str, Any] = {}
        if protocol != mqtt.MQTTv5:
            kwargs["clean_session"] = not persistent
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, **kwargs)
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.subscribed = threading.Event()
        self.session_present: bool | None = None
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.session_present = bool(flags.session_present)
        self.connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.disconnected.set()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        self.subscribed.set()

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.messages.put((message.topic, bytes(message.payload)))

    def connect(self) -> Peer:
        if self.protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 300 if self.persistent else 0
            self.client.connect("127.0.0.1", self.port, clean_start=not self.persistent, properties=props)
        else:
            self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        assert self.connected.wait(TIMEOUT_S), "no CONNACK"
        return self

    def subscribe(self, topic: str) -> None:
        self.subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(TIMEOUT_S), f"no SUBACK for {topic}"

    def publish(self, topic: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=1)

    def receive(self) -> tuple[str, bytes]:
        return self.messages.get(timeout=TIMEOUT_S)

    def disconnect(self) -> None:
        if self.client.is_connected():
            self.client.disconnect()
            self.disconnected.wait(TIMEOUT_S)
        self.client.loop_stop()


@contextmanager
def peer(
    broker: MosquittoProcess,
    client_id: str,
    *,
    protocol: MQTTProtocolVersion = mqtt.MQTTv5,
    persistent: bool = False,
) -> Iterator[Peer]:
    connected = Peer(broker.port, client_id, protocol=protocol, persistent=persistent).connect()
    try:
        yield connected
    finally:
        connected.disconnect()


def publish_all(broker: MosquittoProcess, client_id: str, topic: str, payloads: list[bytes]) -> None:
    """Publish at QoS 1 and return once the broker has acknowledged every message."""
    with peer(broker, client_id) as publisher:
        infos = [publisher.publish(topic, payload) for payload in payloads]
        wait_until(
            lambda: all(info.is_published() for info in infos),
            timeout=TIMEOUT_S,
            message=f"broker did not PUBACK all {len(infos)} messages",
        )


def drain_until(subscriber: Peer, sentinel: bytes) -> list[bytes]:
    """Payloads received before `sentinel` (QoS 1 on one topic arrives in order)."""
    payloads = []
    while (payload := subscriber.receive()[1]) != sentinel:
        payloads.append(payload)
    return payloads


# -- the broker runs the shipped config ----------------------------------------------------


def test_started_broker_accepts_connections_and_routes_a_message(mosquitto: MosquittoProcess, prefix: str) -> None:
    assert mosquitto.running
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    assert mosquitto.port != 1883
    topic = f"{prefix}/hello"
    with peer(mosquitto, f"{prefix}-sub") as subscriber:
        subscriber.subscribe(topic)
        publish_all(mosquitto, f"{prefix}-pub", topic, [b"hi"])
        assert subscriber.receive() == (topic, b"hi")


def test_generated_config_is_the_shipped_one_with_port_and_paths_moved(
    mosquitto: MosquittoProcess,
) -> None:
    lines = mosquitto.conf_path.read_text().splitlines()
    settings = [line for line in lines if line.strip() and not line.startswith("#")]
    assert "set_tcp_nodelay true" in settings
    assert "persistence true" in settings
    assert "max_queued_messages 10000000" in settings
    assert f"listener {mosquitto.port} 127.0.0.1" in settings
    assert "listener 1883" not in settings
    assert f"persistence_location {mosquitto.workdir / 'data'}/" in settings
    assert not [line for line in settings if "/var/" in line or "/run/" in line]
    # Nothing else was dropped: every shipped setting is still there, in order.
    shipped = [
        line
        for line in SHIPPED_CONF.read_text().splitlines()
        if line.strip()
        and not line.startswith("#")
        and line.split()[0] not in {"listener", "persistence_location", "log_dest"}
    ]
    assert [line for line in settings if line in shipped] == shipped


@pytest.mark.parametrize("protocol", list(PROTOCOLS.values()), ids=list(PROTOCOLS))
def test_restart_keeps_a_persistent_session_and_its_queued_message(
    mosquitto: MosquittoProcess, prefix: str, protocol: MQTTProtocolVersion
) -> None:
    topic = f"{prefix}/jobs"
    worker_id = f"{prefix}-worker"
    with peer(mosquitto, worker_id, protocol=protocol, persistent=True) as worker:
        worker.subscribe(topic)
    publish_all(mosquitto, f"{prefix}-pub", topic, [b"queued while offline"])

    port = mosquitto.port
    mosquitto.restart()
    assert mosquitto.port == port
    assert "Saving in-memory database" in mosquitto.log_text()

    # No subscribe after reconnecting: the session and its queued message came back from disk.
    with peer(mosquitto, worker_id, protocol=protocol, persistent=True) as worker:
        assert worker.session_present is True
        assert worker.receive() == (topic, b"queued while offline")


def test_kill_makes_the_port_refuse_connections_until_started_again(
    mosquitto: MosquittoProcess,
) -> None:
    mosquitto.kill()
    assert not mosquitto.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", mosquitto.port), timeout=TIMEOUT_S).close()
    mosquitto.start()
    socket.create_connection(("127.0.0.1", mosquitto.port), timeout=TIMEOUT_S).close()


@pytest.mark.parametrize(
    ("extra_conf", "expected"),
    [([], 1500), (["max_queued_messages 10"], 10)],
    ids=["shipped-unlimited", "limit-10"],
)
def test_offline_queue_limit_drops_silently_and_shipped_config_lifts_it(
    mosquitto_factory: MosquittoFactory, prefix: str, extra_conf: list[str], expected: int
) -> None:
    broker = mosquitto_factory(extra_conf)
    topic = f"{prefix}/jobs"
    worker_id = f"{prefix}-worker"
    with peer(broker, worker_id, persistent=True) as worker:
        worker.subscribe(topic)
    # Every publish is acknowledged, including those the broker is about to drop.
    publish_all(broker, f"{prefix}-pub", topic, [b"%d" % i for i in range(1500)])

    with peer(broker, worker_id, persistent=True) as worker:
        publish_all(broker, f"{prefix}-sentinel", topic, [b"end"])
        received = drain_until(worker, b"end")
    assert received == [b"%d" % i for i in range(expected)]


# -- the helpers themselves --------------------------------------------------------------


def test_start_failure_raises_with_the_broker_log(mosquitto_factory: MosquittoFactory) -> None:
    broker = mosquitto_factory(["no_such_directive 1"], start=False)
    with pytest.raises(MosquittoError, match='Unknown configuration variable "no_such_directive"'):
        broker.start()
    assert not broker.running


def test_context_manager_starts_stops_and_cleans_up() -> None:
    if find_mosquitto() is None:
        pytest.skip("mosquitto not installed")
    with MosquittoProcess() as broker:
        workdir = broker.workdir
        socket.create_connection(("127.0.0.1", broker.port), timeout=TIMEOUT_S).close()
    assert not broker.running
    assert not workdir.exists()


def test_build_config_substitutes_in_place_and_appends_the_rest(tmp_path: Path) -> None:
    shipped = "listener 1883\n#listener 9001\nmax_queued_messages 0\nlog_dest stderr\nuser x\n"
    text = build_config(
        shipped,
        ports=[4242],
        workdir=tmp_path,
        extra_conf=["max_queued_messages 5", "log_type all", "retain_available false"],
    )
    lines = text.splitlines()
    assert lines[:3] == ["listener 4242 127.0.0.1", "#listener 9001", "max_queued_messages 5"]
    assert "max_queued_messages 0" not in lines
    assert lines[-2:] == ["retain_available false", "log_type all"]
    assert f"persistence_location {tmp_path / 'data'}/" in lines
    assert "user x" not in lines
    with pytest.raises(ValueError, match="persistence_location"):
        build_config(shipped, ports=[1], workdir=tmp_path, extra_conf=["persistence_location /"])


def test_wait_until_returns_the_value_or_raises_with_the_message() -> None:
    assert wait_until(lambda: 42, timeout=0.1) == 42
    with pytest.raises(AssertionError, match="never true"):
        wait_until(lambda: False, timeout=0.05, message="never true")


def test_start_picks_new_ports_when_the_free_one_was_taken_meanwhile(
    mosquitto_factory: MosquittoFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        real_free_port = brokers.free_port
        offers = iter([taken])
        monkeypatch.setattr(brokers, "free_port", lambda: next(offers, None) or real_free_port())
        broker = mosquitto_factory()
        assert broker.port != taken
        assert "Address already in use" in broker.log_text()


def test_missing_mosquitto_skips_unless_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "find_mosquitto", lambda: None)
    monkeypatch.delenv(conftest.REQUIRE_MOSQUITTO_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="mosquitto not installed"):
        conftest._mosquitto_executable()
    monkeypatch.setenv(conftest.REQUIRE_MOSQUITTO_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="MQTT_TASKS_REQUIRE_MOSQUITTO=1"):
        conftest._mosquitto_executable()
