"""transport.Connection against real brokers: protocol auto-detection, publish/subscribe, Last Will."""

from __future__ import annotations

import struct
import threading
import time
from functools import partial
from typing import Any

import paho.mqtt.client as paho
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqtt_tasks import ConfigError, ConnectError, PayloadTooLargeError, Settings
from mqtt_tasks.transport import Connection, Message, Will, paho_internals
from mqtt_tasks.transport.inflight import Inflight
from mqtt_tasks.transport.paho_internals import BufferedSocket, TunedClient
from tests.brokers import MosquittoProcess, free_port, wait_until
from tests.faults.proxy import JOIN_S, relay, stop_listening
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
    assert not conn.closed


def test_bad_options_are_config_errors_not_paho_value_errors() -> None:
    """paho says ValueError for a bad option; the transport says ConfigError (still a ValueError)."""
    settings = Settings.from_url("mqtt://127.0.0.1:1", protocol="3.1.1")
    with pytest.raises(ConfigError, match="Invalid QoS"):
        Connection(settings, "bad-will", will=Will("x/will", b"gone", qos=3))
    with pytest.raises(ConfigError, match="Invalid inflight"):
        Connection(settings, "bad-window", max_inflight=-1)
    with pytest.raises(ConfigError, match="Keepalive"):
        Connection(settings.with_(keepalive=-1), "bad-keepalive").connect(timeout=1)


def test_a_paho_without_the_private_names_fails_at_import_naming_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(paho.Client, "_packet_queue")
    with pytest.raises(ImportError, match=r"_packet_queue.*paho-mqtt>=2\.1,<2\.3"):
        paho_internals._check_paho()


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


def test_mqtt5_response_topic_and_correlation_reach_the_receiver(mosquitto: MosquittoProcess, prefix: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    inbox = Inbox()
    sub = _conn(mosquitto.url, "sub5", on_message=inbox)
    sub.subscribe(f"{prefix}/req")
    sub.connect()
    pub = _conn(mosquitto.url, "pub5").connect()
    paho_path: list[Any] = []
    generic = paho.Client._handle_publish  # taken only if the fast decoding is not

    def recorded(client: paho.Client) -> Any:
        paho_path.append(client)
        return generic(client)

    monkeypatch.setattr(paho.Client, "_handle_publish", recorded)
    try:
        pub.publish(f"{prefix}/req", b"{}", response_topic=f"{prefix}/reply", correlation_data=b"\x00corr")
        (msg,) = inbox.wait(1)
        assert (msg.response_topic, msg.correlation_data) == (f"{prefix}/reply", b"\x00corr")
        assert paho_path == [], "decoded by TunedClient._handle_publish itself, not paho's generic path"
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


def test_send_window_honours_the_brokers_receive_maximum(broker_url: str, broker_kind: str, prefix: str) -> None:
    """MQTT 5 says a client must not have more unacknowledged QoS 1 publishes than the server's
    Receive Maximum (EMQX and HiveMQ disconnect one that does); paho ignores it, the Connection
    applies it. Mosquitto's is its max_inflight_messages (20 in the shipped conf); amqtt speaks
    3.1.1, which has no such limit, so the configured window stays."""
    conn = _conn(broker_url, "window", max_inflight=500).connect()
    inbox = Inbox()
    reader = _conn(broker_url, "window-r", on_message=inbox)
    reader.subscribe(f"{prefix}/w")
    reader.connect()
    try:
        assert conn.send_window == (20 if broker_kind == "mosquitto" else 500)
        for i in range(300):  # more than the window: the rest queue in paho and go as acks return
            conn.publish(f"{prefix}/w", str(i).encode())
        assert conn.flush(DEADLINE)
        assert sorted(int(m.payload) for m in inbox.wait(300)) == list(range(300))
    finally:
        conn.close()
        reader.close()


def test_mosquitto_sends_past_a_clients_receive_maximum_once_acks_flow(mosquitto: MosquittoProcess,
                                                                        prefix: str) -> None:
    """A broker fact docs/broker-facts.md does not have (Mosquitto 2.0.11): with messages queued for a
    client, each PUBACK it sends lets Mosquitto send up to Receive Maximum more, so the client's
    unacknowledged messages grow past its Receive Maximum. So a worker's line of waiting tasks is
    not bounded by flow control; with a coordinator online the worker hands on what it does not
    expect to start within defer_after (docs/architecture.md)."""
    inbox = Inbox()
    receiver = Connection(Settings.from_url(mosquitto.url, prefix=prefix), f"rm-{prefix}", on_message=inbox,
                          manual_ack=True, receive_maximum=4)
    receiver.subscribe(f"{prefix}/rm")
    receiver.connect()
    sender = _conn(mosquitto.url, "rm-s").connect()
    try:
        for _ in range(100):
            sender.publish(f"{prefix}/rm", b"x")
        assert sender.flush(DEADLINE)
        first = inbox.wait(4)
        time.sleep(0.5)  # a negative check: would the broker send a 5th unacknowledged message?
        assert len(inbox.messages) == 4, "Receive Maximum holds while nothing is acknowledged"
        for message in first:
            receiver.ack(message)
        # 4 acks free 4 places; Mosquitto sends more than that (measured: 16, Receive Maximum per ack).
        # If this fails, Mosquitto now honours Receive Maximum: update docs/broker-facts.md and the docs.
        assert len(inbox.wait(9)) - 4 > 4
    finally:
        receiver.close()
        sender.close()


def test_ack_many_acknowledges_a_batch_in_one_write(mosquitto: MosquittoProcess, prefix: str) -> None:
    """The coordinator's batch acks: acked messages are not delivered again to a persistent
    session, and the acks open the Receive Maximum window for the next ones."""
    settings = Settings.from_url(mosquitto.url, prefix=prefix)
    inbox = Inbox()

    def receiver(box: Inbox) -> Connection:
        conn = Connection(settings, f"batch-{prefix}", on_message=box, manual_ack=True, receive_maximum=50,
                          session_expiry=300)
        conn.subscribe(f"{prefix}/b")
        return conn.connect()

    conn = receiver(inbox)
    sender = _conn(mosquitto.url, "batch-s").connect()
    try:
        for i in range(200):
            sender.publish(f"{prefix}/b", str(i).encode())
        assert sender.flush(DEADLINE)
        acked = 0
        while acked < 150:  # ack in batches of 50: each batch lets the next 50 in
            batch = inbox.wait(acked + 50)[acked:acked + 50]
            conn.ack_many(batch)
            acked += 50
        inbox.wait(200)
        conn.close()  # the last 50 unacknowledged: the session keeps them
        again = Inbox()
        conn = receiver(again)
        redelivered = sorted(int(m.payload) for m in again.wait(50))
        assert redelivered == list(range(150, 200))
    finally:
        conn.close()
        sender.close()


def test_a_backlog_read_in_large_chunks_arrives_whole_and_in_order(mosquitto: MosquittoProcess, prefix: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain TCP is read 64 KiB at a time (many packets per system call, packets split across
    chunks): every packet arrives, in order, the last one included (nothing follows it on the
    socket, so it is found in the buffer, not by waiting for more bytes).

    (bench: receiving a backlog costs 63-105 us per message this way against 124-165 with paho's
    own reads, `/tmp`-free measurement in docs/benchmarks.md)."""
    settings = Settings.from_url(mosquitto.url, prefix=prefix)
    inbox = Inbox()
    conn = Connection(settings, f"chunk-{prefix}", on_message=inbox, session_expiry=300, receive_maximum=65535)
    conn.subscribe(f"{prefix}/c")
    conn.connect().close()
    sender = _conn(mosquitto.url, "chunk-s").connect()
    for i in range(3000):
        sender.publish(f"{prefix}/c", str(i).encode() * 20)
    assert sender.flush(DEADLINE)
    sender.publish(f"{prefix}/c", b"last")  # the final packet: nothing arrives after it
    assert sender.flush(DEADLINE)
    sender.close()
    made: list[BufferedSocket] = []

    def recording(sock: Any) -> BufferedSocket:
        made.append(BufferedSocket(sock))
        return made[-1]

    monkeypatch.setattr(paho_internals, "BufferedSocket", recording)
    conn = Connection(settings, f"chunk-{prefix}", on_message=inbox, session_expiry=300, receive_maximum=65535)
    conn.subscribe(f"{prefix}/c")
    conn.connect()
    try:
        assert len(made) == 1, "the connection reads through a BufferedSocket"
        got = inbox.wait(3001, timeout=DEADLINE)
        assert got[-1].payload == b"last"
        assert [int(m.payload[: len(m.payload) // 20]) for m in got[:-1]] == list(range(3000))
    finally:
        conn.close()
    assert conn.closed


def test_publishes_from_many_threads_all_go_out_with_coalesced_wake_ups(broker_url: str, prefix: str) -> None:
    """A packet queued behind an unwritten one skips the wake-up of the network thread, and
    ``held_writes`` queues several behind one: no packet may be stranded in the queue. Four
    threads publish at once, half of it in held blocks of three, while acks come back; every
    publish is acknowledged and received, on both brokers. (A stranded packet would not be lost
    for good: paho's select() times out each second and writes what is queued; the benchmark's
    latency workload is what would show such a stall.)"""
    settings = Settings.from_url(broker_url, prefix=prefix)
    inbox = Inbox()
    receiver = Connection(settings, f"wake-r-{prefix}", on_message=inbox, receive_maximum=65535)
    receiver.subscribe(f"{prefix}/w")
    receiver.connect()
    sender = Connection(settings, f"wake-s-{prefix}", max_inflight=1000).connect()
    per_thread, threads = 600, 4

    def publish(t: int) -> None:
        i = 0
        while i < per_thread:
            if i % 2:
                with sender.held_writes():
                    for _ in range(3):
                        sender.publish(f"{prefix}/w", f"{t}:{i}".encode())
                        i += 1
            else:
                sender.publish(f"{prefix}/w", f"{t}:{i}".encode())
                i += 1

    workers = [threading.Thread(target=publish, args=(t,)) for t in range(threads)]
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.join(DEADLINE)
        assert sender.flush(DEADLINE), f"{sender.outstanding} publishes never acknowledged"
        got = inbox.wait(threads * per_thread)
        assert len({m.payload for m in got}) == threads * per_thread
    finally:
        sender.close()
        receiver.close()


# -- the fast PUBLISH and PUBACK handling of paho_internals.TunedClient, held to paho's own --------
def _publish_packet(topic: bytes, qos: int, retain: bool, dup: bool, mid: int, props: Properties | None,
                    payload: bytes) -> tuple[int, bytearray]:
    command = 0x30 | (dup << 3) | (qos << 1) | retain
    body = struct.pack("!H", len(topic)) + topic + (struct.pack("!H", mid) if qos else b"")
    if props is not None:
        body += props.pack()
    return command, bytearray(body + payload)


def _feed(client: Any, command: int, body: bytearray) -> None:
    """Leave ``body`` in the client as paho's packet reader does before handling it."""
    client._in_packet = {"command": command, "packet": body, "have_remaining": 1, "remaining_count": [],
                         "remaining_mult": 1, "remaining_length": len(body), "to_process": 0, "pos": 0}


def _received(protocol: int, command: int, packet: bytearray, fast: bool) -> list[Message]:
    """What a Connection's owner receives for ``packet``: the callbacks are the ones it wires."""
    inbox = Inbox()
    inflight = Inflight("decode", manual_ack=True, on_message=inbox)
    client = TunedClient(CallbackAPIVersion.VERSION2, client_id="decode", protocol=protocol, manual_ack=True)
    client.on_message = inflight.on_paho_message
    if fast:
        client.on_publish_received = inflight.deliver
    _feed(client, command, packet)
    try:
        client._handle_publish()
    except Exception as exc:  # noqa: BLE001 - both paths must fail alike
        return [Message(f"raised {type(exc).__name__}", b"", 0, False, 0, 0)]
    return inbox.messages


@st.composite
def publish_packets(draw: st.DrawFn) -> tuple[int, int, bytearray]:
    protocol = draw(st.sampled_from([paho.MQTTv311, paho.MQTTv5]))
    topic = draw(st.text(min_size=0, max_size=30).map(str.encode) | st.binary(max_size=10))
    qos = draw(st.sampled_from([0, 1]))
    props = None
    if protocol == paho.MQTTv5:
        props = Properties(PacketTypes.PUBLISH)
        if draw(st.booleans()):
            props.ResponseTopic = draw(st.text(min_size=1, max_size=20))
        if draw(st.booleans()):
            props.CorrelationData = draw(st.binary(max_size=16))
        if draw(st.booleans()):
            props.MessageExpiryInterval = draw(st.integers(1, 2**32 - 1))
        if draw(st.booleans()):
            props.UserProperty = ("k", draw(st.text(max_size=8)))
    command, packet = _publish_packet(topic, qos, draw(st.booleans()), draw(st.booleans()),
                                      draw(st.integers(1, 65535)), props, draw(st.binary(max_size=64)))
    if draw(st.integers(0, 9)) == 0:  # now and then a truncated packet
        del packet[draw(st.integers(0, len(packet))):]
    return protocol, command, packet


@settings(max_examples=400, deadline=None)
@given(publish_packets())
def test_fast_publish_decoding_delivers_what_paho_would(case: tuple[int, int, bytearray]) -> None:
    """QoS 0/1 PUBLISH packets, MQTT 3.1.1 and 5, with and without properties, bad UTF-8 and
    truncated ones: the fast path hands on exactly the Message paho's own decoding would."""
    protocol, command, packet = case
    assert _received(protocol, command, bytearray(packet), fast=True) == \
        _received(protocol, command, bytearray(packet), fast=False)


def _outcome(handle: Any) -> int | str:
    try:
        return int(handle())
    except Exception as exc:  # noqa: BLE001 - both paths must fail alike
        return type(exc).__name__


@pytest.mark.parametrize("protocol", [paho.MQTTv311, paho.MQTTv5])
@pytest.mark.parametrize("packet", [b"\x00\x07", b"\x00\x07\x00", b"\x00\x07\x10\x00"], ids=["short", "rc", "rc+props"])
def test_fast_puback_handling_matches_paho(protocol: int, packet: bytes) -> None:
    """A 2-byte PUBACK skips paho's decoding; longer ones (MQTT 5 reason code, properties) take
    paho's path. Either way on_publish gets the same mid and reason, and the message is done; a
    longer one is malformed for 3.1.1 and rejected as paho rejects it (2.2 raises, 2.1 returns
    a protocol error)."""
    seen = {}
    for fast in (True, False):
        client = TunedClient(CallbackAPIVersion.VERSION2, client_id="puback", protocol=protocol)
        info = client.publish("t", b"x", qos=1)  # not connected: kept as an outgoing message
        assert info.mid in client._out_messages
        calls: list[tuple[int, int]] = []
        client.on_publish = lambda _c, _u, mid, rc, _p: calls.append((mid, int(rc.value)))  # noqa: B023
        _feed(client, 0x40, bytearray(struct.pack("!H", info.mid) + packet[2:]))
        handle = client._handle_pubackcomp if fast else partial(paho.Client._handle_pubackcomp, client)
        outcome = _outcome(partial(handle, "PUBACK"))
        seen[fast] = (outcome, calls, info._published, info.mid in client._out_messages)
    assert seen[True] == seen[False]
    if protocol == paho.MQTTv311 and len(packet) > 2:
        assert seen[True][1:] == ([], False, True), "rejected: on_publish not called, still outgoing"
    else:  # is_published() raises here (never sent), hence _published
        reason = packet[2] if len(packet) > 2 else 0  # 0x10: "no matching subscribers", a success
        assert seen[True] == (0, [(info.mid, reason)], True, False)


class ClosesOnMqtt5:
    """A broker front that behaves as RabbitMQ 3.10's MQTT plugin does: an MQTT 5 CONNECT gets the
    connection closed with no CONNACK; an MQTT 3.1.1 one is relayed to a real Mosquitto."""

    def __init__(self, upstream_port: int) -> None:
        import socket

        self.upstream_port = upstream_port
        self.mqtt5_attempts = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._threads = [threading.Thread(target=self._serve, name="closes-on-mqtt5", daemon=True)]
        self._threads[0].start()

    def _serve(self) -> None:
        import socket

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            first = client.recv(4096)  # CONNECT: fixed header, length, "\0\4MQTT", protocol level
            level = first[first.index(b"MQTT") + 4] if b"MQTT" in first else 0
            if level == 5:
                self.mqtt5_attempts += 1
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            upstream.sendall(first)
            for src, dst in ((client, upstream), (upstream, client)):
                self._threads.append(threading.Thread(target=relay, args=(src, dst), name="relay", daemon=True))
                self._threads[-1].start()

    def close(self) -> None:
        """Stop accepting and join the threads (the relays end with the client's connection)."""
        stop_listening(self._listener)
        for thread in list(self._threads):
            thread.join(JOIN_S)


def test_auto_falls_back_to_mqtt311_when_the_broker_closes_on_an_mqtt5_connect(mosquitto: MosquittoProcess) -> None:
    front = ClosesOnMqtt5(mosquitto.port)
    try:
        received: list[Message] = []
        conn = Connection(Settings.from_url(f"mqtt://127.0.0.1:{front.port}"), "rabbit-like",
                          on_message=received.append)
        conn.subscribe("rabbit/t")
        conn.connect(timeout=DEADLINE)
        try:
            assert front.mqtt5_attempts >= 1 and not conn.is_mqtt5
            conn.publish("rabbit/t", b"x")
            wait_until(lambda: received, DEADLINE, message="nothing came back over the 3.1.1 connection")
            assert [m.payload for m in received] == [b"x"]
        finally:
            conn.close()
    finally:
        front.close()


def test_a_clean_close_under_a_stream_of_messages_sends_no_last_will(mosquitto: MosquittoProcess) -> None:
    """paho closes its socket right after writing DISCONNECT; with messages still unread the kernel
    resets the connection, and Mosquitto, reading the reset before the DISCONNECT, published the
    Last Will of a clean stop (an HA leader's clean stop then looked like a crash to the others):
    4 of 20 closes before the fix. Here 20 clients close while a stream flows towards them."""
    settings = Settings.from_url(mosquitto.url)
    wills: list[Message] = []
    sentinel, stop = threading.Event(), threading.Event()

    def on_watch(message: Message) -> None:
        if message.topic == "will-watch/sentinel":
            sentinel.set()
        else:
            wills.append(message)

    def stream() -> None:
        while not stop.is_set():
            for _ in range(50):
                flooder.publish("will-flood", b"x" * 200, qos=1)
            if flooder.outstanding > 2000:  # paho's message ids would run out
                flooder.flush(DEADLINE)
            time.sleep(0.001)  # the stream's pace, not a synchronisation

    watcher = Connection(settings, "will-watcher", on_message=on_watch)
    watcher.subscribe("will-watch/#")
    flooder = Connection(settings, "will-flooder")
    watcher.connect()
    flooder.connect()
    streaming = threading.Thread(target=stream, name="test-will-stream", daemon=True)
    streaming.start()
    try:
        for i in range(20):
            received: list[Message] = []
            victim = Connection(settings, f"will-victim-{i}", on_message=received.append,
                                will=Will(f"will-watch/victim-{i}", b"offline"))
            victim.subscribe("will-flood")
            victim.connect()
            wait_until(lambda r=received: len(r) >= 1000, DEADLINE, message="the stream never reached the client")
            victim.close()
            line = wait_until(lambda n=f"will-victim-{i} ": [x for x in mosquitto.log_text().splitlines()
                                                             if n in x and ("disconnected" in x or "closed" in x)],
                              DEADLINE)
            assert "disconnected" in line[0], line  # not "closed its connection": the DISCONNECT was read
        sentinel.clear()
        watcher.publish("will-watch/sentinel", b"")  # behind any Will the broker sent
        assert sentinel.wait(DEADLINE)
        assert wills == []
    finally:
        stop.set()
        streaming.join(DEADLINE)
        flooder.close()
        watcher.close()
