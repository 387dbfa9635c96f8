"""Request/response over MQTT, from a plain paho client that knows only docs/protocol.md.

- MQTT 5: a task carrying a Response Topic and Correlation Data gets its *final* status event
  on that topic, with the same Correlation Data (opaque bytes, echoed unchanged).
- MQTT 3.1.1 (Mosquitto and the embedded amqtt broker): the `reply_to` and `correlation` fields
  do the same job.
- Message Expiry: a task whose expiry passes while it waits unstarted in a worker ends
  `expired`, reported on its status topic and its Response Topic.
"""

from __future__ import annotations

import json
import queue
import threading
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqtt_tasks.app import TaskApp
from mqtt_tasks.worker import Worker
from tests.brokers import wait_until

TIMEOUT = 10.0


class PlainClient:
    """A bare paho client: what a non-mqtt-tasks producer would write."""

    def __init__(self, url: str, *, mqtt5: bool) -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.mqtt5 = mqtt5
        self.received: queue.Queue[tuple[str, dict[str, Any], Any]] = queue.Queue()
        self._subacks: set[int] = set()
        kwargs: dict[str, Any] = {"protocol": paho.MQTTv5} if mqtt5 else {"protocol": paho.MQTTv311}
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"plain-{uuid.uuid4().hex[:8]}", **kwargs)
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        connected = threading.Event()

        def on_connect(*args: Any) -> None:
            connected.set()

        self.client.on_connect = on_connect
        self.client.connect(host, int(port))
        self.client.loop_start()
        assert connected.wait(TIMEOUT), "no CONNACK"

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        self._subacks.add(mid)

    def _on_message(self, client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        self.received.put((msg.topic, json.loads(msg.payload), correlation))

    def subscribe(self, *topics: str) -> None:
        for topic in topics:
            _rc, mid = self.client.subscribe(topic, qos=1)
            wait_until(partial(self._subacks.__contains__, mid), TIMEOUT, message=f"no SUBACK for {topic}")

    def publish(self, topic: str, body: dict[str, Any], **props: Any) -> None:
        properties = None
        if props:
            properties = Properties(PacketTypes.PUBLISH)
            for name, value in props.items():
                setattr(properties, name, value)
        info = self.client.publish(topic, json.dumps(body), qos=1, properties=properties)
        info.wait_for_publish(TIMEOUT)

    def next(self, timeout: float = TIMEOUT) -> tuple[str, dict[str, Any], Any]:
        try:
            return self.received.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message within {timeout}s") from None

    def until(self, predicate: Any, timeout: float = TIMEOUT) -> list[tuple[str, dict[str, Any], Any]]:
        """Every message up to and including the first one matching ``predicate``."""
        seen = []
        while True:
            item = self.next(timeout)
            seen.append(item)
            if predicate(item):
                return seen

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def make_app(url: str, prefix: str) -> tuple[TaskApp, threading.Event]:
    app = TaskApp(broker=url, prefix=prefix)
    release = threading.Event()

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    @app.task
    def block() -> str:
        release.wait(TIMEOUT)
        return "released"

    return app, release


@pytest.fixture
def running_worker(broker_url: str, prefix: str) -> Iterator[tuple[str, threading.Event]]:
    app, release = make_app(broker_url, prefix)
    worker = Worker(app, concurrency=2, heartbeat_s=1.0, worker_id=f"w-{prefix}").start()
    try:
        yield broker_url, release
    finally:
        release.set()
        worker.stop(grace=5)
        app.close()


@pytest.fixture
def mosquitto_worker(mosquitto: Any, prefix: str) -> Iterator[tuple[str, threading.Event]]:
    """A worker with one slot on Mosquitto (MQTT 5)."""
    app, release = make_app(mosquitto.url, prefix)
    worker = Worker(app, concurrency=1, heartbeat_s=1.0, worker_id=f"w-{prefix}").start()
    try:
        yield mosquitto.url, release
    finally:
        release.set()
        worker.stop(grace=5)
        app.close()


@pytest.fixture
def client5(mosquitto_worker: tuple[str, threading.Event]) -> Iterator[PlainClient]:
    client = PlainClient(mosquitto_worker[0], mqtt5=True)
    yield client
    client.close()


def test_mqtt5_response_topic_gets_final_event_with_correlation_data(client5: PlainClient, prefix: str) -> None:
    reply = f"{prefix}/replies/client"
    client5.subscribe(reply)
    correlation = b"\x00\xffopaque-\x01"  # any bytes, not only UTF-8
    client5.publish(f"{prefix}/tasks/default", {"id": "rr-1", "task": "add", "args": [2, 3]},
                    ResponseTopic=reply, CorrelationData=correlation)
    topic, event, echoed = client5.next()
    # Only the final event goes to the Response Topic: `started` never shows up there.
    assert topic == reply
    assert event["state"] == "succeeded" and event["result"] == 5 and event["final"] is True
    assert event["id"] == "rr-1" and event["attempt"] == 1
    assert echoed == correlation


def test_mqtt5_failure_is_a_final_reply_too(client5: PlainClient, prefix: str) -> None:
    reply = f"{prefix}/replies/client"
    client5.subscribe(reply)
    client5.publish(f"{prefix}/tasks/default", {"id": "rr-2", "task": "no.such.task"},
                    ResponseTopic=reply, CorrelationData=b"c-2")
    topic, event, echoed = client5.next()
    assert (topic, event["state"], event["final"], echoed) == (reply, "failed", True, b"c-2")
    assert event["error"]["type"] == "UnknownTaskError"


def test_mqtt5_reply_to_and_response_topic_both_answered(client5: PlainClient, prefix: str) -> None:
    client5.subscribe(f"{prefix}/replies/a", f"app-{prefix}/b")
    client5.publish(f"{prefix}/tasks/default",
                    {"id": "rr-3", "task": "add", "args": [1, 1], "reply_to": f"app-{prefix}/b", "correlation": "x"},
                    ResponseTopic=f"{prefix}/replies/a", CorrelationData=b"y")
    got = {client5.next()[0:3:2] for _ in range(2)}
    # Correlation Data goes with the Response Topic; the `correlation` field is in both payloads.
    assert got == {(f"{prefix}/replies/a", b"y"), (f"app-{prefix}/b", None)}


def test_mqtt311_reply_to_and_correlation_fields(running_worker: tuple[str, threading.Event], prefix: str) -> None:
    client = PlainClient(running_worker[0], mqtt5=False)
    try:
        reply = f"{prefix}/replies/shell"
        client.subscribe(reply)
        client.publish(f"{prefix}/tasks/default",
                       {"id": "rr-4", "task": "add", "args": [20, 22], "reply_to": reply, "correlation": "req-17"})
        topic, event, _ = client.next()
        assert topic == reply
        assert (event["state"], event["result"], event["final"], event["correlation"]) == (
            "succeeded", 42, True, "req-17")

        client.publish(f"{prefix}/tasks/default",
                       {"id": "rr-5", "task": "missing", "reply_to": reply, "correlation": "req-18"})
        _, event, _ = client.next()
        assert (event["id"], event["state"], event["final"], event["correlation"]) == ("rr-5", "failed", True, "req-18")

        client.publish(f"{prefix}/tasks/default",
                       {"id": "rr-6", "task": "add", "args": [1, 2], "expires_at": 1.0, "reply_to": reply,
                        "correlation": "req-19"})
        _, event, _ = client.next()
        assert (event["id"], event["state"], event["final"]) == ("rr-6", "expired", True)
        assert event["correlation"] == "req-19"
    finally:
        client.close()


def test_message_expiry_while_waiting_for_a_slot_ends_expired(client5: PlainClient, prefix: str,
                                                              mosquitto_worker: tuple[str, threading.Event]) -> None:
    """MQTT 5 Message Expiry means "not started by then: expired", also inside the worker.

    The broker drops a message that expires in *its* queue without telling anyone; a worker
    turns the time left at delivery into `expires_at`, so a task that expires while it waits in
    the worker for a free slot ends `expired` with a status event and a reply.
    """
    release = mosquitto_worker[1]
    reply = f"{prefix}/replies/x"
    client5.subscribe(f"{prefix}/status/+", reply)
    client5.publish(f"{prefix}/tasks/default", {"id": "busy", "task": "block"})
    client5.until(lambda item: item[1]["id"] == "busy" and item[1]["state"] == "started")

    client5.publish(f"{prefix}/tasks/default", {"id": "late", "task": "add", "args": [1, 1]},
                    ResponseTopic=reply, CorrelationData=b"late-1", MessageExpiryInterval=1)
    seen = client5.until(lambda item: item[0] == reply)
    late = [event for topic, event, _ in seen if event["id"] == "late"]
    assert [e["state"] for e in late] == ["expired", "expired"]  # status topic, then the reply
    assert late[-1]["final"] is True and "waiting" in late[-1]["reason"]
    assert seen[-1][2] == b"late-1"

    release.set()  # the slot frees; the expired task must not start after all
    client5.until(lambda item: item[1]["id"] == "busy" and item[1].get("final"))
    client5.publish(f"{prefix}/tasks/default", {"id": "after", "task": "add", "args": [2, 2]})
    rest = client5.until(lambda item: item[1]["id"] == "after" and item[1].get("final"))
    assert all(event["id"] != "late" for _, event, _ in rest)
