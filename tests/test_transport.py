"""transport.Connection against real brokers: protocol auto-detection, publish/subscribe, Last Will."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from mqtt_tasks import ConnectError, PayloadTooLargeError, Settings
from mqtt_tasks.transport import Connection, Message, Will
from tests.brokers import MosquittoProcess, free_port
from tests.tasks_fixture import DEADLINE, Listener


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._cond = threading.Condition()

    def __call__(self, message: Message) -> None:
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()

    def wait(self, count: int, timeout: float = DEADLINE) -> list[Message]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.messages) >= count, timeout), \
                f"{len(self.messages)} of {count} messages arrived"
            return list(self.messages)


def _conn(url: str, name: str, **kwargs: Any) -> Connection:
    return Connection(Settings.from_url(url), f"{name}-{time.monotonic_ns()}", **kwargs)


@pytest.mark.parametrize("with_properties", [False, True], ids=["bare", "will+receive-max"])
def test_protocol_auto_detection(broker_url: str, broker_kind: str, with_properties: bool) -> None:
    """amqtt speaks 3.1.1 only, Mosquitto speaks 5. A CONNECT carrying MQTT 5 properties (what a
    worker sends) must fall back too: amqtt cannot even parse it and never answers."""
    kwargs: dict[str, Any] = {}
    if with_properties:
        kwargs = {"will": Will("x/will", b"gone"), "receive_maximum": 8, "manual_ack": True}
    conn = _conn(broker_url, "auto", **kwargs)
    started = time.monotonic()
    conn.connect(timeout=5)
    try:
        assert conn.is_mqtt5 is (broker_kind == "mosquitto")
        assert time.monotonic() - started < 2, "detection must not wait for a timeout"
    finally:
        conn.close()


def test_forced_protocols(broker_url: str, broker_kind: str) -> None:
    v311 = Connection(Settings.from_url(broker_url + "?protocol=3.1.1"), "forced-311").connect(timeout=5)
    assert not v311.is_mqtt5
    v311.close()
    v5 = Connection(Settings.from_url(broker_url + "?protocol=5"), "forced-5")
    if broker_kind == "mosquitto":
        assert v5.connect(timeout=5).is_mqtt5
        v5.close()
    else:
        # amqtt cannot parse an MQTT 5 CONNECT with properties and never answers it
        with pytest.raises(ConnectError, match="refused|no CONNACK"):
            v5.connect(timeout=1)


def test_unreachable_broker_is_a_connect_error() -> None:
    conn = Connection(Settings.from_url(f"mqtt://127.0.0.1:{free_port()}"), "nobody")
    with pytest.raises(ConnectError, match="cannot reach the MQTT broker"):
        conn.connect(timeout=2)


def test_publish_subscribe_and_flush(broker_url: str, prefix: str) -> None:
    inbox = Inbox()
    sub = _conn(broker_url, "sub", on_message=inbox)
    sub.subscribe(f"{prefix}/x/+")
    sub.connect()
    pub = _conn(broker_url, "pub").connect()
    try:
        for i in range(50):
            pub.publish(f"{prefix}/x/{i}", str(i).encode())
        assert pub.flush(DEADLINE) and pub.outstanding == 0
        got = inbox.wait(50)
        assert sorted(int(m.payload) for m in got) == list(range(50))
        assert all(m.qos == 1 and not m.retain for m in got)
    finally:
        pub.close()
        sub.close()


def test_publish_over_the_cap_is_refused_locally(broker_url: str, prefix: str) -> None:
    conn = Connection(Settings.from_url(broker_url, max_payload=1024), "capped").connect()
    try:
        with pytest.raises(PayloadTooLargeError):
            conn.publish(f"{prefix}/big", b"x" * 1025)
        assert conn.outstanding == 0
    finally:
        conn.close()


def test_mqtt5_response_topic_and_correlation_reach_the_receiver(mosquitto: MosquittoProcess, prefix: str) -> None:
    inbox = Inbox()
    sub = _conn(mosquitto.url, "sub5", on_message=inbox)
    sub.subscribe(f"{prefix}/req")
    sub.connect()
    pub = _conn(mosquitto.url, "pub5").connect()
    try:
        pub.publish(f"{prefix}/req", b"{}", response_topic=f"{prefix}/reply", correlation_data=b"\x00corr")
        (msg,) = inbox.wait(1)
        assert (msg.response_topic, msg.correlation_data) == (f"{prefix}/reply", b"\x00corr")
    finally:
        pub.close()
        sub.close()


def test_abort_sends_the_last_will(broker_url: str, prefix: str) -> None:
    watcher = Listener(broker_url, [f"{prefix}/will"]).start()
    conn = _conn(broker_url, "doomed", will=Will(f"{prefix}/will", b"offline", retain=True)).connect()
    try:
        conn.abort()
        got = watcher.wait_for(lambda ms: [m for m in ms if m.payload == b"offline"], what="the Last Will")
        assert got
    finally:
        watcher.close()


def test_subscriptions_are_restored_after_a_broker_restart(mosquitto: MosquittoProcess, prefix: str) -> None:
    inbox = Inbox()
    connects: list[bool] = []
    sub = _conn(mosquitto.url, "resub", on_message=inbox, on_connect=connects.append)
    sub.subscribe(f"{prefix}/after")
    sub.connect()
    try:
        generation = sub.generation
        mosquitto.restart()
        deadline = time.monotonic() + DEADLINE
        while not (sub.generation > generation and sub.wait_ready(0.05)):
            assert time.monotonic() < deadline, "the connection did not come back"
        pub = _conn(mosquitto.url, "pub-after").connect()
        pub.publish(f"{prefix}/after", b"hello")
        assert inbox.wait(1)[0].payload == b"hello"
        assert connects == [True, False]
        pub.close()
    finally:
        sub.close()
