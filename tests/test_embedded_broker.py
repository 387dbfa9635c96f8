"""The embedded broker: lifecycle, and MQTT shared subscriptions added to amqtt 0.12.1.

Real sockets, plain paho-mqtt 3.1.1 clients, one broker per test on an ephemeral port and a
unique topic per test. Nothing sleeps: tests wait on a condition with a deadline, and "nothing
else arrived" is proven with a barrier message that travels the same path after the others.
"""

from __future__ import annotations

import importlib
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from mqtt_tasks.broker import EmbeddedBroker, split_shared_filter

TIMEOUT = 5.0
SUBACK_FAILURE = 0x80

# Every paho callback notifies this; wait_until() sleeps on it.
_activity = threading.Condition()


def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    """Wait until ``predicate()`` is true or ``timeout`` passes; returns the last value.

    Wakes at once on any received packet, and re-checks every 50 ms for predicates that
    depend on something other than this process's clients (the broker's own state).
    """
    deadline = time.monotonic() + timeout
    with _activity:
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            _activity.wait(min(remaining, 0.05))
    return True


class Client:
    """A paho 3.1.1 client that records every message it receives."""

    def __init__(self, port: int, client_id: str, *, transport: str = "tcp", keepalive: int = 60) -> None:
        self.client_id = client_id
        self.received: list[tuple[str, bytes, bool]] = []
        self._subacks: dict[int, list[int]] = {}
        self._connected = threading.Event()
        self._paho = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            transport=transport,  # type: ignore[arg-type]
        )
        self._paho.on_connect = self._on_connect
        self._paho.on_subscribe = self._on_subscribe
        self._paho.on_message = self._on_message
        self._paho.connect("127.0.0.1", port, keepalive=keepalive)
        self._paho.loop_start()
        assert self._connected.wait(TIMEOUT), f"{client_id} did not connect"

    def subscribe(self, *filters: str) -> list[int]:
        """Subscribe at QoS 1; returns the SUBACK codes."""
        _, mid = self._paho.subscribe([(topic_filter, 1) for topic_filter in filters])
        assert mid is not None
        assert wait_until(lambda: mid in self._subacks), f"no SUBACK for {filters}"
        return self._subacks[mid]

    def publish(self, topic: str, *payloads: bytes, retain: bool = False) -> None:
        """Publish at QoS 1, in order, and wait for every PUBACK."""
        infos = [self._paho.publish(topic, payload, qos=1, retain=retain) for payload in payloads]
        for info in infos:
            info.wait_for_publish(TIMEOUT)
            assert info.is_published()

    def payloads(self, topic: str) -> list[bytes]:
        with _activity:
            return [payload for t, payload, _ in self.received if t == topic]

    def close(self) -> None:
        self._paho.disconnect()
        self._paho.loop_stop()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if not reason_code.is_failure:
            self._connected.set()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        with _activity:
            self._subacks[mid] = [code.value for code in reason_codes]
            _activity.notify_all()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with _activity:
            self.received.append((message.topic, message.payload, bool(message.retain)))
            _activity.notify_all()


Connect = Callable[[str], Client]


@pytest.fixture
def topic(prefix: str) -> str:
    return f"test/{prefix}"


@pytest.fixture
def connect(amqtt_broker: EmbeddedBroker) -> Iterator[Connect]:
    """Factory: a connected client on the test's broker; all are closed afterwards."""
    clients: list[Client] = []

    def make(name: str) -> Client:
        client = Client(amqtt_broker.port, f"{name}-{uuid.uuid4().hex[:8]}")
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def settle(publisher: Client, clients: list[Client], topic: str) -> None:
    """Return once everything ``publisher`` sent before has reached ``clients``.

    A barrier message follows the same path (one publisher, the broker's ordered broadcast
    queue, one TCP stream per subscriber) after the earlier messages.
    """
    barrier = f"{topic}-barrier"
    for client in clients:
        client.subscribe(barrier)
    marker = uuid.uuid4().bytes
    publisher.publish(barrier, marker)
    assert wait_until(lambda: all(marker in c.payloads(barrier) for c in clients)), "barrier lost"


def numbered(count: int) -> list[bytes]:
    return [str(n).encode() for n in range(count)]


# --- lifecycle ------------------------------------------------------------------------------


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
    except ConnectionRefusedError:
        return True
    return False


def test_start_binds_an_ephemeral_port_and_stop_closes_it() -> None:
    first, second = EmbeddedBroker(), EmbeddedBroker()
    with pytest.raises(RuntimeError):
        _ = first.port
    assert first.start() is first
    second.start()
    try:
        assert first.port > 0 and second.port > 0 and first.port != second.port
        assert first.url == f"mqtt://127.0.0.1:{first.port}"
        assert any(t.name == "mqtt-tasks-broker" for t in threading.enumerate())
        port = first.port
    finally:
        first.stop()
        second.stop()
    first.stop()  # idempotent
    assert refuses_connections(port)
    with pytest.raises(RuntimeError):
        _ = first.port


def round_trip(broker: EmbeddedBroker, topic: str) -> None:
    receiver = Client(broker.port, "receiver")
    sender = Client(broker.port, "sender")
    receiver.subscribe(topic)
    sender.publish(topic, b"hello")
    assert wait_until(lambda: receiver.payloads(topic) == [b"hello"])
    assert receiver.client_id in broker.connected_client_ids()
    receiver.close()
    sender.close()


def test_context_manager_serves_clients_and_can_restart(topic: str) -> None:
    broker = EmbeddedBroker()
    with broker as entered:
        assert entered is broker
        round_trip(broker, topic)
    assert broker.connected_client_ids() == set()
    with broker:
        round_trip(broker, topic)


def test_start_on_a_busy_port_raises_oserror() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        broker = EmbeddedBroker(port=busy.getsockname()[1])
        with pytest.raises(OSError, match="cannot listen"):
            broker.start()
    broker.stop()  # nothing to stop, and no error


def test_websocket_listener(topic: str) -> None:
    with EmbeddedBroker(websocket_port=0) as broker:
        assert broker.websocket_port not in (None, 0, broker.port)
        assert broker.websocket_port is not None
        over_ws = Client(broker.websocket_port, "ws", transport="websockets")
        over_tcp = Client(broker.port, "tcp")
        over_ws.subscribe(topic)
        over_tcp.publish(topic, b"via ws")
        assert wait_until(lambda: over_ws.payloads(topic) == [b"via ws"])
        over_ws.close()
        over_tcp.close()


@pytest.fixture
def pristine_loggers() -> Iterator[None]:
    noisy = [logging.getLogger(name) for name in ("amqtt", "transitions")]
    saved = [logger.level for logger in noisy]
    for logger in noisy:
        logger.setLevel(logging.NOTSET)
    yield
    for logger, level in zip(noisy, saved, strict=True):
        logger.setLevel(level)


@pytest.mark.usefixtures("pristine_loggers")
def test_amqtt_logging_is_quieted_unless_the_application_chose_a_level() -> None:
    root_level = logging.getLogger().level
    logging.getLogger("transitions").setLevel(logging.DEBUG)
    with EmbeddedBroker():
        assert logging.getLogger("amqtt").level == logging.WARNING
        assert logging.getLogger("transitions").level == logging.DEBUG
    assert logging.getLogger().level == root_level


def test_mqtt5_connect_is_refused_with_unsupported_protocol_version(
    amqtt_broker: EmbeddedBroker,
) -> None:
    """Pins what the transport's fallback to 3.1.1 relies on."""
    codes: list[object] = []
    refused = threading.Event()

    def on_connect(client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        codes.append(reason_code)
        refused.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="v5", protocol=mqtt.MQTTv5)
    client.on_connect = on_connect
    client.connect("127.0.0.1", amqtt_broker.port)
    client.loop_start()
    try:
        assert refused.wait(TIMEOUT)
    finally:
        client.loop_stop()
    reason = codes[0]
    assert reason.is_failure and reason == 132  # type: ignore[attr-defined]
    assert str(reason) == "Unsupported protocol version"


def test_missing_amqtt_gives_an_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "amqtt", None)
    monkeypatch.setitem(sys.modules, "amqtt.broker", None)
    monkeypatch.delitem(sys.modules, "mqtt_tasks.broker")
    with pytest.raises(ImportError, match=r"pip install 'mqtt-tasks\[broker\]'"):
        importlib.import_module("mqtt_tasks.broker")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_run_broker_serves_until_sigterm(topic: str) -> None:
    code = "from mqtt_tasks.broker import run_broker\nrun_broker(port=0, ready=lambda b: print(b.port, flush=True))\n"
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            port = int(process.stdout.readline())  # "" (so a ValueError) if it died
            client = Client(port, "cli")
            client.subscribe(topic)
            client.publish(topic, b"up")
            assert wait_until(lambda: client.payloads(topic) == [b"up"])
            client.close()
            process.send_signal(signal.SIGTERM)
            assert process.wait(TIMEOUT) == 0
        finally:
            process.kill()


# --- shared subscriptions ---------------------------------------------------------------------


def test_split_shared_filter() -> None:
    assert split_shared_filter("$share/g/a/+/#") == ("g", "a/+/#")
    assert split_shared_filter("a/b") is None
    assert split_shared_filter("$SYS/x") is None
    for malformed in ("$share/g", "$share/g/", "$share//a", "$share/g+/a", "$share/#/a"):
        with pytest.raises(ValueError):
            split_shared_filter(malformed)


def test_malformed_shared_filters_are_refused(connect: Connect, topic: str) -> None:
    client = connect("member")
    assert client.subscribe("$share/g", f"$share//{topic}", f"$share/g/{topic}") == [
        SUBACK_FAILURE,
        SUBACK_FAILURE,
        1,
    ]


@pytest.mark.parametrize("size", [2, 3])
def test_group_members_share_the_messages_round_robin(connect: Connect, topic: str, size: int) -> None:
    members = [connect(f"member{n}") for n in range(size)]
    for member in members:
        member.subscribe(f"$share/workers/{topic}")
    publisher = connect("publisher")
    sent = numbered(30)
    publisher.publish(topic, *sent)
    settle(publisher, members, topic)

    shares = [member.payloads(topic) for member in members]
    assert sorted(sum(shares, [])) == sorted(sent)  # every message once: disjoint, complete
    assert [len(share) for share in shares] == [30 // size] * size


def test_wildcard_shared_filter_matches_like_the_inner_filter(connect: Connect, topic: str) -> None:
    member = connect("member")
    member.subscribe(f"$share/g/{topic}/+/done")
    publisher = connect("publisher")
    publisher.publish(f"{topic}/a/done", b"1")
    publisher.publish(f"{topic}/a/other", b"2")
    publisher.publish(f"{topic}/b/done", b"3")
    settle(publisher, [member], topic)
    assert member.payloads(f"{topic}/a/done") == [b"1"]
    assert member.payloads(f"{topic}/b/done") == [b"3"]
    assert member.payloads(f"{topic}/a/other") == []


def test_each_group_gets_every_message(connect: Connect, topic: str) -> None:
    first_group = [connect("a1"), connect("a2")]
    second_group = [connect("b1")]
    for member in first_group:
        member.subscribe(f"$share/a/{topic}")
    second_group[0].subscribe(f"$share/b/{topic}")
    publisher = connect("publisher")
    sent = numbered(20)
    publisher.publish(topic, *sent)
    settle(publisher, first_group + second_group, topic)

    first = [member.payloads(topic) for member in first_group]
    assert sorted(first[0] + first[1]) == sorted(sent)
    assert [len(share) for share in first] == [10, 10]
    assert second_group[0].payloads(topic) == sent


def test_normal_subscriber_alongside_a_group_gets_everything(connect: Connect, topic: str) -> None:
    members = [connect("m1"), connect("m2")]
    for member in members:
        member.subscribe(f"$share/g/{topic}")
    observer = connect("observer")
    observer.subscribe(topic)
    publisher = connect("publisher")
    sent = numbered(20)
    publisher.publish(topic, *sent)
    settle(publisher, [*members, observer], topic)

    assert observer.payloads(topic) == sent
    assert sorted(members[0].payloads(topic) + members[1].payloads(topic)) == sorted(sent)


def test_shared_and_normal_subscription_on_one_client_deliver_once_each(
    connect: Connect,
    topic: str,
) -> None:
    both, member = connect("both"), connect("member")
    both.subscribe(f"$share/g/{topic}", topic)
    member.subscribe(f"$share/g/{topic}")
    publisher = connect("publisher")
    sent = numbered(10)
    publisher.publish(topic, *sent)
    settle(publisher, [both, member], topic)

    copies = Counter(both.payloads(topic))
    shared_to_both = [payload for payload in sent if copies[payload] == 2]
    assert set(copies) == set(sent) and set(copies.values()) <= {1, 2}
    assert sorted(shared_to_both + member.payloads(topic)) == sorted(sent)
    assert len(shared_to_both) == len(member.payloads(topic)) == 5


def test_retained_message_goes_to_normal_but_not_shared_subscribers(
    connect: Connect,
    topic: str,
) -> None:
    publisher = connect("publisher")
    publisher.publish(topic, b"retained", retain=True)
    barrier = f"{topic}-retained-barrier"
    publisher.publish(barrier, b"barrier", retain=True)
    normal = connect("normal")
    normal.subscribe(topic)
    assert wait_until(lambda: normal.received == [(topic, b"retained", True)])

    member = connect("member")  # connects while another client holds a filter matching it
    member.subscribe(f"$share/g/{topic}")
    # Retained messages for a SUBSCRIBE are sent before the next one is handled: once the
    # barrier's retained message arrives, any for the shared filter would have come first.
    member.subscribe(barrier)
    assert wait_until(lambda: member.payloads(barrier) == [b"barrier"])
    assert member.payloads(topic) == []

    publisher.publish(topic, b"live")
    assert wait_until(lambda: member.payloads(topic) == [b"live"])


def test_disconnected_member_stops_receiving(
    amqtt_broker: EmbeddedBroker,
    connect: Connect,
    topic: str,
) -> None:
    leaving, staying = connect("leaving"), connect("staying")
    for member in (leaving, staying):
        member.subscribe(f"$share/g/{topic}")
    publisher = connect("publisher")
    publisher.publish(topic, *numbered(10))
    settle(publisher, [leaving, staying], topic)
    assert len(leaving.payloads(topic)) == len(staying.payloads(topic)) == 5

    leaving.close()
    assert wait_until(lambda: leaving.client_id not in amqtt_broker.connected_client_ids())
    later = [f"later-{n}".encode() for n in range(10)]
    publisher.publish(topic, *later)
    settle(publisher, [staying], topic)
    assert staying.payloads(topic)[5:] == later
    assert len(leaving.payloads(topic)) == 5


def test_messages_with_no_member_connected_are_dropped_and_later_ones_flow(
    amqtt_broker: EmbeddedBroker,
    connect: Connect,
    topic: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = connect("first")
    first.subscribe(f"$share/g/{topic}")
    first.close()
    assert wait_until(lambda: first.client_id not in amqtt_broker.connected_client_ids())
    publisher = connect("publisher")
    publisher.publish(topic, b"dropped-1", b"dropped-2")

    second = connect("second")
    second.subscribe(f"$share/g/{topic}")
    publisher.publish(topic, b"kept-1", b"kept-2")
    settle(publisher, [second], topic)
    assert second.payloads(topic) == [b"kept-1", b"kept-2"]
    assert first.payloads(topic) == []
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def silent_connect(port: int, client_id: str, *, keepalive: int, will_topic: str, will: bytes) -> socket.socket:
    """An MQTT 3.1.1 CONNECT with a Last Will, then silence: a host that lost power, seen from the broker."""
    def text(value: bytes) -> bytes:
        return len(value).to_bytes(2, "big") + value

    flags = 0x02 | 0x04 | 0x08  # clean session, will, will QoS 1
    body = (text(b"MQTT") + bytes([4, flags]) + keepalive.to_bytes(2, "big") + text(client_id.encode())
            + text(will_topic.encode()) + text(will))
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(bytes([0x10, len(body)]) + body)
    assert sock.recv(4) == b"\x20\x02\x00\x00", "no CONNACK"
    return sock


def test_a_silent_client_is_dropped_after_1_5_keep_alives_and_its_will_is_sent(
        amqtt_broker: EmbeddedBroker, connect: Connect, topic: str) -> None:
    watcher = connect("watcher")
    watcher.subscribe(f"{topic}/will")
    alive = Client(amqtt_broker.port, f"alive-{uuid.uuid4().hex[:8]}", keepalive=1)  # pings every second
    silent = silent_connect(amqtt_broker.port, f"silent-{uuid.uuid4().hex[:8]}", keepalive=1,
                            will_topic=f"{topic}/will", will=b"offline")
    try:
        started = time.monotonic()
        assert wait_until(lambda: watcher.payloads(f"{topic}/will") == [b"offline"], timeout=10.0), \
            "the silent client's Last Will never came: keep-alive is not enforced"
        assert time.monotonic() - started >= 1.0  # not before its keep-alive ran out
        assert alive.client_id in amqtt_broker.connected_client_ids()  # a client that pings stays
    finally:
        silent.close()
        alive.close()

