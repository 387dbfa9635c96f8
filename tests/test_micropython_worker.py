"""examples/micropython/taskworker.py on micropython-lib's real umqtt.simple, against a real Mosquitto.

What is real here, and what is not:

- REAL: umqtt.simple's code. tests/vendor/umqtt_simple.py is micropython-lib's
  `micropython/umqtt.simple/umqtt/simple.py`, umqtt.simple 1.8.0 (commit 5e49b1bd41d3), unmodified
  (its SHA-256 is checked below), bugs included: it writes `len()` of what it is given as the
  length, so a `str` with a non-ASCII character makes a malformed packet; it acknowledges a
  message when the callback returns; a QoS 1 publish reads (and hands to the callback) whatever
  arrives before its PUBACK; a dropped connection surfaces as OSError (or IndexError /
  AssertionError on a short read).
- REAL: the broker, a private Mosquitto from the shipped mosquitto.conf (tests/brokers.py), and,
  where a test says so, the project's coordinator and Python producer.
- NOT REAL: the interpreter. This is CPython, not the MicroPython VM (the MicroPython unix port is
  not installable here or in CI). The shims stand in for what MicroPython provides, and nothing
  else: `socket.socket()` gets MicroPython's stream methods `read(n)` (None when a non-blocking
  socket has nothing, b"" at end of stream) and `write(buf[, n])` (a `str` is written as its UTF-8
  bytes, as MicroPython's buffer protocol does), and the example's `json.dumps` writes non-ASCII
  characters as they are, as MicroPython's does (CPython's default escapes them, which would hide
  the length bug). `socket.getaddrinfo`, `struct` and `binascii` are CPython's own: umqtt.simple
  uses only what the two have in common.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import socket
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mqtt_tasks.app import TaskApp
from mqtt_tasks.errors import TaskFailedError
from tests.brokers import MosquittoProcess, wait_until
from tests.coord_helpers import coordinator
from tests.test_request_response import PlainClient

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "micropython" / "taskworker.py"
VENDORED_UMQTT = ROOT / "tests" / "vendor" / "umqtt_simple.py"
UPSTREAM_MARK = "# ---- upstream file follows, byte for byte ----\n"
UMQTT_SIMPLE_1_8_0_SHA256 = "3cfd101ef774e0c6f9543425650ddc36168a7bbf4b8b8b71667e27023dfd951f"
TIMEOUT = 10.0
# Fast reconnection for the tests; a device keeps the defaults (1 s doubling to 30 s).
FAST_BACKOFF = {"backoff_ms": 50, "max_backoff_ms": 400}


# -- MicroPython shims (see the module docstring) -------------------------------------------------

class MicroPythonSocket(socket.socket):
    """A CPython socket with MicroPython's stream `read` / `write`, which umqtt.simple uses."""

    def read(self, n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            try:
                chunk = self.recv(n - len(data))
            except BlockingIOError:  # MicroPython: None from a non-blocking socket with nothing to read
                return data or None
            if not chunk:  # end of stream: what was read so far (b"" at once)
                break
            data += chunk
        return data

    def write(self, buf: bytes | bytearray | str, n: int | None = None) -> int:
        data = buf.encode() if isinstance(buf, str) else bytes(buf)  # MicroPython: a str's UTF-8 bytes
        if n is not None:
            data = data[:n]
        self.sendall(data)
        return len(data)


MICROPYTHON_SOCKET = types.SimpleNamespace(socket=MicroPythonSocket, getaddrinfo=socket.getaddrinfo)
MICROPYTHON_JSON = types.SimpleNamespace(dumps=functools.partial(json.dumps, ensure_ascii=False), loads=json.loads)


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


umqtt_simple = _load("umqtt_simple_1_8_0", VENDORED_UMQTT)
umqtt_simple.socket = MICROPYTHON_SOCKET
taskworker = _load("taskworker", EXAMPLE)
taskworker.json = MICROPYTHON_JSON


# -- fixtures -------------------------------------------------------------------------------------

class Device:
    """A taskworker.Worker on a umqtt.simple MQTTClient, polled by a thread as the device's main loop."""

    def __init__(self, broker: MosquittoProcess, prefix: str, worker_id: str, **options: Any) -> None:
        self.client = umqtt_simple.MQTTClient(worker_id, "127.0.0.1", port=broker.port, keepalive=30)
        self.worker = taskworker.Worker(self.client, worker_id, prefix=prefix, heartbeat_s=0.5, **options)
        self.handled = 0
        self.crashed: BaseException | None = None

        @self.worker.task("add")
        def add(a: int, b: int) -> int:
            self.handled += 1
            return a + b

        @self.worker.task("boom")
        def boom() -> None:
            raise RuntimeError("sensor not found")

        @self.worker.task("echo")
        def echo(text: str, suffix: str = "") -> str:
            return text + suffix

        self.gate = threading.Event()

        @self.worker.task("gate")
        def gate() -> None:  # holds the device's only slot until the test opens the gate
            assert self.gate.wait(TIMEOUT)

        self.worker.start()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"device-{worker_id}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                if not self.worker.poll():
                    self._stop.wait(0.01)  # the device's idle sleep
        except BaseException as exc:  # the device would have died: the tests say so at once
            self.crashed = exc

    def alive(self) -> bool:
        if self.crashed is not None:
            raise AssertionError(f"the device crashed: {self.crashed!r}") from self.crashed
        return True

    def stop(self, clean: bool = True) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        if clean:
            self.worker.stop()
        else:
            self.client.sock.close()  # no DISCONNECT: the broker publishes the Last Will


@pytest.fixture
def device_factory(mosquitto: MosquittoProcess, prefix: str) -> Iterator[Callable[..., Device]]:
    devices: list[Device] = []

    def make(worker_id: str, **options: Any) -> Device:
        device = Device(mosquitto, prefix, worker_id, **options)
        devices.append(device)
        return device

    yield make
    for device in devices:
        if not device._stop.is_set():
            device.stop()


@pytest.fixture
def producer(mosquitto: MosquittoProcess, prefix: str) -> Iterator[TaskApp]:
    app = TaskApp(broker=mosquitto.url, prefix=prefix)
    yield app
    app.close()


@pytest.fixture
def observer(mosquitto: MosquittoProcess, prefix: str) -> Iterator[PlainClient]:
    client = PlainClient(mosquitto.url, mqtt5=False)
    client.subscribe(f"{prefix}/status/+", f"{prefix}/errors", f"{prefix}/workers/+")
    yield client
    client.close()


def results(device: Device, handles: list[Any], timeout: float) -> list[Any]:
    """Every handle's result, failing at once if the device crashed; one deadline for all."""
    deadline = time.monotonic() + timeout
    out = []
    for handle in handles:
        wait_until(lambda h=handle: device.alive() and h.done(), max(deadline - time.monotonic(), 0.0),
                   message=f"{handle.id} not done; {len(out)} of {len(handles)} were")
        out.append(handle.result(0))
    return out


def submit_while_busy(device: Device, producer: TaskApp, calls: list[tuple[Any, ...]]) -> list[Any]:
    """Submit `calls` while the device's only slot is taken (by "gate"), so that they all arrive
    at once, then let it go on. Returns the handles, the gate's first."""
    gate = producer.submit("gate")
    wait_until(lambda: device.alive() and (device.worker.running or {}).get("id") == gate.id, TIMEOUT)
    handles = [producer.submit(*call) for call in calls]
    assert producer.connection().flush(TIMEOUT)  # the broker has them all: on their way to the device
    device.gate.set()
    return [gate, *handles]


# -- the vendored client ----------------------------------------------------------------------------

def test_the_vendored_umqtt_simple_is_upstream_1_8_0_unmodified() -> None:
    header, upstream = VENDORED_UMQTT.read_text(encoding="utf-8").split(UPSTREAM_MARK, 1)
    assert hashlib.sha256(upstream.encode()).hexdigest() == UMQTT_SIMPLE_1_8_0_SHA256
    assert "umqtt.simple 1.8.0" in header and "MIT" in header


# -- tests ----------------------------------------------------------------------------------------

def test_runs_a_task_from_the_python_producer(device_factory: Any, producer: TaskApp, observer: PlainClient,
                                              prefix: str) -> None:
    device_factory("esp-1")
    handle = producer.submit("add", 2, 3)
    assert handle.result(TIMEOUT) == 5
    seen = observer.until(lambda item: item[1].get("id") == handle.id and item[1].get("final"))
    states = [event["state"] for topic, event, _ in seen if topic == f"{prefix}/status/{handle.id}"]
    assert states == ["started", "succeeded"]


def test_failure_unknown_task_and_bad_input(device_factory: Any, producer: TaskApp, observer: PlainClient,
                                            prefix: str) -> None:
    device_factory("esp-1")
    with pytest.raises(TaskFailedError, match="sensor not found"):
        producer.submit("boom").result(TIMEOUT)
    with pytest.raises(TaskFailedError, match="UnknownTaskError"):
        producer.submit("nope").result(TIMEOUT)

    producer.connection().publish(f"{prefix}/tasks/default", b"{not json")
    producer.connection().publish(f"{prefix}/tasks/default", json.dumps({"id": "bad id!", "task": "add"}).encode())
    reports = [observer.until(lambda item: item[0] == f"{prefix}/errors")[-1][1] for _ in range(2)]
    assert [r["reason"] for r in reports] == ["not valid JSON", "field 'id': 1-128 characters of A-Z a-z 0-9 _ . : -"]
    assert reports[0]["source"] == "esp-1" and reports[0]["payload"] == "{not json"
    assert producer.submit("add", 1, 1).result(TIMEOUT) == 2  # still working


def test_heartbeat_is_retained_and_last_will_says_offline(device_factory: Any, observer: PlainClient,
                                                          prefix: str) -> None:
    device = device_factory("esp-2")
    beat = observer.until(lambda item: item[0] == f"{prefix}/workers/esp-2")[-1][1]
    assert (beat["state"], beat["concurrency"], beat["free"], beat["queues"]) == ("online", 1, 1, ["default"])
    device.stop(clean=False)
    will = observer.until(lambda item: item[0] == f"{prefix}/workers/esp-2" and item[1]["state"] != "online")
    assert will[-1][1]["state"] == "offline"


def test_shared_subscription_spreads_tasks(device_factory: Any, producer: TaskApp) -> None:
    devices = [device_factory("esp-a"), device_factory("esp-b")]
    handles = [producer.submit("add", i, i) for i in range(6)]
    assert [h.result(TIMEOUT) for h in handles] == [2 * i for i in range(6)]
    wait_until(lambda: sum(d.handled for d in devices) == 6, TIMEOUT)
    assert all(d.handled > 0 for d in devices)  # Mosquitto hands out $share messages round-robin


def test_a_burst_of_50_without_a_coordinator_all_complete(device_factory: Any, producer: TaskApp) -> None:
    """One slot, no coordinator: the burst is run one task after the other, never bounced back to
    the shared queue (where this device, its only member, would get it straight back)."""
    device = device_factory("esp-1")
    handles = submit_while_busy(device, producer, [("add", i, 1) for i in range(50)])
    assert results(device, handles, 30.0) == [None] + [i + 1 for i in range(50)]
    assert device.handled == 50


def test_without_a_coordinator_a_task_over_max_held_fails_worker_full(device_factory: Any,
                                                                     producer: TaskApp) -> None:
    """Memory is bounded: beyond max_held the newest tasks end failed (WorkerFull), at once."""
    device = device_factory("esp-1", max_held=3)
    gate, *handles = submit_while_busy(device, producer, [("add", i, 1) for i in range(10)])
    assert results(device, handles[:3], TIMEOUT) == [1, 2, 3]
    for handle in handles[3:]:
        with pytest.raises(TaskFailedError, match="WorkerFull"):
            handle.result(TIMEOUT)
    assert gate.result(TIMEOUT) is None and device.handled == 3


def test_with_a_coordinator_deferred_tasks_come_back_through_the_inbox(
        mosquitto: MosquittoProcess, device_factory: Any, producer: TaskApp, prefix: str) -> None:
    inbox = PlainClient(mosquitto.url, mqtt5=False)
    try:
        inbox.subscribe(f"{prefix}/inbox/esp-1")
        with coordinator(mosquitto.url, prefix):
            device = device_factory("esp-1", max_pending=1)
            wait_until(lambda: device.worker.coordinator_online, TIMEOUT, message="no coordinator seen")
            handles = submit_while_busy(device, producer, [("add", i, 1) for i in range(20)])
            assert results(device, handles, 30.0) == [None] + [i + 1 for i in range(20)]
            dispatched = inbox.next()  # at least one task was deferred and handed back through the inbox
            assert dispatched[0] == f"{prefix}/inbox/esp-1" and dispatched[1]["task"] == "add"
            assert device.handled == 20
    finally:
        inbox.close()


@pytest.mark.parametrize("with_coordinator", [True, False], ids=["coordinator", "no-coordinator"])
def test_routed_tasks_run_only_on_the_device_with_the_label(
        mosquitto: MosquittoProcess, device_factory: Any, producer: TaskApp, observer: PlainClient, prefix: str,
        with_coordinator: bool) -> None:
    """docs/routing.md: a device without the label hands a task that requires it to the coordinator
    (which dispatches it to the labelled device's inbox) or, with none online, forwards it to
    P/routed/{queue}/{labels}, which only the labelled device shares."""
    from contextlib import nullcontext

    with coordinator(mosquitto.url, prefix) if with_coordinator else nullcontext():
        plain = device_factory("esp-plain")
        camera = device_factory("esp-cam", labels=("camera",))
        beat = observer.until(lambda item: item[0] == f"{prefix}/workers/esp-cam")[-1][1]
        assert beat["labels"] == ["camera"]
        if with_coordinator:
            wait_until(lambda: plain.worker.coordinator_online and camera.worker.coordinator_online, TIMEOUT)
        routed = [producer.send("add", [i, 1], {}, extra={"requires": ["camera"]}) for i in range(6)]
        free = [producer.send("add", [i, 2], {}) for i in range(4)]
        assert results(camera, routed, TIMEOUT) == [i + 1 for i in range(6)]
        assert results(plain, free, TIMEOUT) == [i + 2 for i in range(4)]
        assert camera.handled >= 6 and plain.handled == 10 - camera.handled
        ran_on: dict[str, str] = {}
        ids = {h.id for h in routed}

        def all_seen(item: tuple[str, dict[str, Any], Any]) -> bool:
            if item[1].get("id") in ids and item[1].get("state") in ("started", "succeeded"):
                ran_on[item[1]["id"]] = item[1]["worker"]
            return set(ran_on) == ids
        observer.until(all_seen)
        assert set(ran_on.values()) == {"esp-cam"}


def test_non_ascii_arguments_result_and_reply_topic_round_trip(device_factory: Any, producer: TaskApp,
                                                               mosquitto: MosquittoProcess, observer: PlainClient,
                                                               prefix: str) -> None:
    device = device_factory("esp-1")
    assert producer.submit("echo", "héllo ☃", suffix=" ✓").result(TIMEOUT) == "héllo ☃ ✓"
    reply_topic = f"{prefix}/replies/réponse-☃"  # umqtt.simple needs the topic as bytes too
    replies = PlainClient(mosquitto.url, mqtt5=False)
    try:
        replies.subscribe(reply_topic)
        producer.connection().publish(f"{prefix}/tasks/default", json.dumps(
            {"id": "uni-1", "task": "echo", "args": ["Grüße, 世界"], "reply_to": reply_topic}).encode())
        topic, event, _ = replies.next()
        assert (topic, event["state"], event["result"]) == (reply_topic, "succeeded", "Grüße, 世界")
    finally:
        replies.close()
    assert device.alive()


def test_a_non_utf8_task_is_reported_and_the_next_task_runs(device_factory: Any, producer: TaskApp,
                                                           observer: PlainClient, prefix: str) -> None:
    device = device_factory("esp-1")
    tasks = f"{prefix}/tasks/default"
    latin1 = b'{"id":"latin-1","task":"echo","args":["caf\xe9"]}'  # "café" in Latin-1
    producer.connection().publish(tasks, latin1)
    report = observer.until(lambda item: item[0] == f"{prefix}/errors")[-1][1]
    assert (report["reason"], report["source"], report["size"]) == ("not valid UTF-8", "esp-1", len(latin1))
    assert report["payload"] == '{"id":"latin-1","task":"echo","args":["caf\ufffd"]}'

    long_payload = ("x" + "é" * 300).encode()  # 601 bytes: the 512-byte excerpt ends inside an "é"
    producer.connection().publish(tasks, long_payload)
    report = observer.until(lambda item: item[0] == f"{prefix}/errors")[-1][1]
    assert (report["reason"], report["size"], report["payload"]) == ("not valid JSON", 601, "x" + "é" * 255)

    assert producer.submit("echo", "next").result(TIMEOUT) == "next"
    assert device.alive()


def test_reconnects_after_the_broker_restarts(device_factory: Any, mosquitto: MosquittoProcess, prefix: str) -> None:
    device = device_factory("esp-r", **FAST_BACKOFF)
    with TaskApp(broker=mosquitto.url, prefix=prefix) as before:
        assert before.submit("add", 1, 1).result(TIMEOUT) == 2

    mosquitto.restart()
    restarted_at = time.time()
    watcher = PlainClient(mosquitto.url, mqtt5=False)
    try:
        watcher.subscribe(f"{prefix}/workers/esp-r")
        # a fresh heartbeat after the restart: reconnected (the retained one from before may come first)
        watcher.until(lambda item: item[1]["state"] == "online" and item[1]["ts"] >= restarted_at)
        with TaskApp(broker=mosquitto.url, prefix=prefix) as after:
            handles = [after.submit("add", i, 2) for i in range(5)]
            assert results(device, handles, TIMEOUT) == [i + 2 for i in range(5)]
        device.stop(clean=False)  # the Last Will was set again on the new connection
        watcher.until(lambda item: item[1]["state"] == "offline")
    finally:
        watcher.close()
