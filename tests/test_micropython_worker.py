"""examples/micropython/taskworker.py under CPython, against a real Mosquitto.

`UMQTTClient` below is a stand-in for MicroPython's `umqtt.simple.MQTTClient`: the same methods
and the same wire behaviour (MQTT 3.1.1 over a raw socket; the callback runs inside
`wait_msg` / `check_msg` and the PUBACK goes out after it returns; a QoS 1 publish waits for its
PUBACK by reading messages, so callbacks can run inside `publish`).
"""

from __future__ import annotations

import importlib.util
import json
import socket
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mqtt_tasks.app import TaskApp
from mqtt_tasks.errors import TaskFailedError
from tests.brokers import MosquittoProcess, wait_until
from tests.test_request_response import PlainClient

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "micropython" / "taskworker.py"
TIMEOUT = 10.0


def load_taskworker() -> Any:
    spec = importlib.util.spec_from_file_location("taskworker", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("taskworker", module)
    spec.loader.exec_module(module)
    return module


taskworker = load_taskworker()


class UMQTTClient:
    """umqtt.simple.MQTTClient's interface and behaviour, on a CPython socket."""

    def __init__(self, client_id: str, server: str, port: int = 1883, keepalive: int = 0) -> None:
        self.client_id = client_id.encode()
        self.server, self.port, self.keepalive = server, port, keepalive
        self.cb: Callable[[bytes, bytes], None] | None = None
        self.pid = 0
        self.lw: tuple[bytes, bytes, bool, int] | None = None
        self.sock: socket.socket | None = None

    # -- umqtt.simple API ------------------------------------------------------------------
    def set_callback(self, f: Callable[[bytes, bytes], None]) -> None:
        self.cb = f

    def set_last_will(self, topic: str, msg: str | bytes, retain: bool = False, qos: int = 0) -> None:
        self.lw = (_b(topic), _b(msg), retain, qos)

    def connect(self, clean_session: bool = True) -> bool:
        self.sock = socket.create_connection((self.server, self.port), timeout=TIMEOUT)
        flags = 0x02 if clean_session else 0
        body = bytearray(b"\x00\x04MQTT\x04") + b"\x00" + struct.pack("!H", self.keepalive) + _str(self.client_id)
        if self.lw is not None:
            topic, msg, retain, qos = self.lw
            flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
            body += _str(topic) + _str(msg)
        body[7] = flags
        self._send(0x10, bytes(body))
        resp = self._read(4)
        assert resp[0] == 0x20 and resp[1] == 0x02
        if resp[3] != 0:
            raise OSError(resp[3])
        return bool(resp[2] & 1)

    def disconnect(self) -> None:
        assert self.sock is not None
        self.sock.sendall(b"\xe0\x00")
        self.sock.close()

    def ping(self) -> None:
        assert self.sock is not None
        self.sock.sendall(b"\xc0\x00")

    def publish(self, topic: str | bytes, msg: str | bytes, retain: bool = False, qos: int = 0) -> None:
        body = _str(_b(topic))
        if qos > 0:
            self.pid += 1
            pid = self.pid
            body += struct.pack("!H", pid)
        self._send(0x30 | (qos << 1) | int(retain), body + _b(msg))
        if qos == 1:
            while True:
                op = self.wait_msg()
                if op == 0x40:
                    size = self._read(1)
                    assert size == b"\x02"
                    if struct.unpack("!H", self._read(2))[0] == pid:
                        return

    def subscribe(self, topic: str | bytes, qos: int = 0) -> None:
        assert self.cb is not None, "subscribe callback is not set"
        self.pid += 1
        self._send(0x82, struct.pack("!H", self.pid) + _str(_b(topic)) + bytes([qos]))
        while True:
            op = self.wait_msg()
            if op == 0x90:
                resp = self._read(4)
                assert resp[1:3] == struct.pack("!H", self.pid)
                if resp[3] == 0x80:
                    raise OSError(-1)
                return

    def wait_msg(self) -> int | None:
        assert self.sock is not None
        try:
            res = self.sock.recv(1)
        except BlockingIOError:
            return None
        finally:
            self.sock.setblocking(True)
            self.sock.settimeout(TIMEOUT)
        if res == b"":
            raise OSError(-1)
        if res == b"\xd0":  # PINGRESP
            self._read(1)
            return None
        op = res[0]
        if op & 0xF0 != 0x30:
            return op
        size = self._recv_len()
        topic_len = struct.unpack("!H", self._read(2))[0]
        topic = self._read(topic_len)
        size -= topic_len + 2
        pid = 0
        if op & 6:
            pid = struct.unpack("!H", self._read(2))[0]
            size -= 2
        msg = self._read(size)
        assert self.cb is not None
        self.cb(topic, msg)
        if op & 6 == 2:
            self.sock.sendall(b"\x40\x02" + struct.pack("!H", pid))
        return op

    def check_msg(self) -> int | None:
        assert self.sock is not None
        self.sock.setblocking(False)
        return self.wait_msg()

    # -- helpers -----------------------------------------------------------------------------
    def _send(self, header: int, body: bytes) -> None:
        assert self.sock is not None
        length, encoded = len(body), bytearray()
        while True:
            byte, length = length & 0x7F, length >> 7
            encoded.append(byte | (0x80 if length else 0))
            if not length:
                break
        self.sock.sendall(bytes([header]) + bytes(encoded) + body)

    def _read(self, n: int) -> bytes:
        assert self.sock is not None
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise OSError(-1)
            data += chunk
        return data

    def _recv_len(self) -> int:
        n, shift = 0, 0
        while True:
            b = self._read(1)[0]
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                return n
            shift += 7


def _b(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _str(value: bytes) -> bytes:
    return struct.pack("!H", len(value)) + value


# -- fixtures ----------------------------------------------------------------------------------

class Device:
    """A taskworker.Worker polled by a thread, like the device's main loop."""

    def __init__(self, broker: MosquittoProcess, prefix: str, worker_id: str) -> None:
        self.client = UMQTTClient(worker_id, "127.0.0.1", broker.port, keepalive=30)
        self.worker = taskworker.Worker(self.client, worker_id, prefix=prefix, heartbeat_s=0.5)
        self.handled = 0

        @self.worker.task("add")
        def add(a: int, b: int) -> int:
            self.handled += 1
            return a + b

        @self.worker.task("boom")
        def boom() -> None:
            raise RuntimeError("sensor not found")

        self.worker.start()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"device-{worker_id}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.worker.poll():
                self._stop.wait(0.01)

    def stop(self, clean: bool = True) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        if clean:
            self.worker.stop()
        else:
            assert self.client.sock is not None
            self.client.sock.close()  # no DISCONNECT: the broker publishes the Last Will


@pytest.fixture
def device_factory(mosquitto: MosquittoProcess, prefix: str) -> Iterator[Callable[[str], Device]]:
    devices: list[Device] = []

    def make(worker_id: str) -> Device:
        device = Device(mosquitto, prefix, worker_id)
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


# -- tests -------------------------------------------------------------------------------------

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
    assert [r["reason"] for r in reports] == ["not valid UTF-8 JSON",
                                              "field 'id': 1-128 characters of A-Z a-z 0-9 _ . : -"]
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
