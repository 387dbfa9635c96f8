"""Payload cap (Settings.max_payload, 256 KiB) at both ends, and bounded queues where input arrives."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

from mqtt_tasks import PayloadTooLargeError, Settings, TaskApp, Worker
from mqtt_tasks.protocol.codec import DEFAULT_MAX_PAYLOAD
from mqtt_tasks.protocol.topics import Topics
from mqtt_tasks.transport import Connection, Message
from mqtt_tasks.worker import MAX_QUEUED_QOS0
from tests.brokers import SHIPPED_CONF, MosquittoProcess, wait_until


def test_the_cap_is_256_kib_and_below_the_shipped_broker_limit() -> None:
    assert DEFAULT_MAX_PAYLOAD == Settings().max_payload == 256 * 1024
    broker_limit = int(re.search(r"^max_packet_size (\d+)", SHIPPED_CONF.read_text(), re.M).group(1))  # type: ignore[union-attr]
    assert broker_limit > DEFAULT_MAX_PAYLOAD + 64 * 1024  # room for topic, properties and header


class Watch:
    def __init__(self, broker: MosquittoProcess, *filters: str) -> None:
        self.got: list[Message] = []
        self.conn = Connection(Settings.from_url(broker.url), "watch", on_message=self.got.append)
        for f in filters:
            self.conn.subscribe(f)
        self.conn.connect()

    def topics(self) -> list[str]:
        return [m.topic for m in list(self.got)]


def test_producer_refuses_oversize_before_publishing(mosquitto: MosquittoProcess, prefix: str) -> None:
    t = Topics(prefix)
    watch = Watch(mosquitto, t.all_tasks)
    app = TaskApp(settings=Settings.from_url(mosquitto.url, prefix=prefix))
    try:
        with pytest.raises(PayloadTooLargeError) as info, app:
            app.submit("echo", "x" * DEFAULT_MAX_PAYLOAD)
        assert info.value.limit == DEFAULT_MAX_PAYLOAD and info.value.size > DEFAULT_MAX_PAYLOAD
        canary = Connection(Settings.from_url(mosquitto.url), "canary").connect()
        canary.publish(t.tasks("canary"), b"{}")
        canary.close()
        wait_until(lambda: t.tasks("canary") in watch.topics())
        assert watch.topics() == [t.tasks("canary")]  # the oversize task never reached the broker
        assert app.awaiting == 0  # and left no waiting future behind
    finally:
        watch.conn.close(1.0)


def test_worker_reports_oversize_on_receipt_and_runs_nothing(mosquitto: MosquittoProcess, prefix: str) -> None:
    t = Topics(prefix)
    app = TaskApp(settings=Settings.from_url(mosquitto.url, prefix=prefix))
    ran: list[int] = []

    @app.task
    def echo(x: object) -> int:
        ran.append(1)
        return 1

    watch = Watch(mosquitto, t.errors)
    big = Connection(Settings.from_url(mosquitto.url, max_payload=1024 * 1024), "big").connect()
    try:
        with Worker(app, concurrency=1), app:
            payload = json.dumps({"id": "big-1", "task": "echo", "args": ["x" * DEFAULT_MAX_PAYLOAD]}).encode()
            big.publish(t.tasks("default"), payload)
            wait_until(lambda: watch.got, message="no error report for the oversize task")
            report = json.loads(watch.got[0].payload)
            assert report["id"] == "big-1" and report["size"] == len(payload) and "exceeds" in report["reason"]
            assert len(report["payload"]) <= 512 + 3  # only an excerpt is echoed
            assert echo.submit(1).result(timeout=10) == 1 and ran == [1]
    finally:
        big.close(1.0)
        watch.conn.close(1.0)


def test_qos0_flood_is_bounded_and_counted() -> None:
    """QoS 0 tasks (best effort by definition, and outside the broker's in-flight window) beyond
    MAX_QUEUED_QOS0 waiting for a slot are dropped and counted, never queued; QoS 1 is never dropped."""
    app = TaskApp(settings=Settings.from_url("mqtt://127.0.0.1:1"))
    gate = threading.Event()

    @app.task
    def echo() -> None: ...

    @app.task
    def block() -> None:
        gate.wait(30)

    worker = Worker(app, worker_id="flood", concurrency=1)  # not started: never connects
    task = lambda i, name="echo": json.dumps({"id": f"t{i}", "task": name}).encode()  # noqa: E731
    try:
        worker.receive(Message("mqtt-tasks/tasks/default", task("busy", "block"), 1, False, 1, 0))
        assert worker.snapshot().free == 0  # the only slot is taken until the gate opens
        for i in range(MAX_QUEUED_QOS0 + 500):
            worker.receive(Message("mqtt-tasks/tasks/default", task(i), 0, False, i, 0))
        assert worker.snapshot().waiting == MAX_QUEUED_QOS0 and worker.stats["dropped"] == 500
        worker.receive(Message("mqtt-tasks/tasks/default", task("q1"), 1, False, 0, 0))  # QoS 1: waits
        assert worker.snapshot().waiting == MAX_QUEUED_QOS0 + 1 and worker.stats["dropped"] == 500
    finally:
        worker.stop()  # never started: releases the pool, starts nothing more
        gate.set()


@pytest.mark.parametrize("protocol,window", [("3.1.1", 20), ("5", 8)])
def test_qos1_inflow_is_bounded_by_the_broker_window(mosquitto: MosquittoProcess, prefix: str,
                                                     protocol: str, window: int) -> None:
    """A full worker with no coordinator holds a bounded number of unacknowledged tasks; the rest
    waits at the broker. The window is Mosquitto's max_inflight_messages (20) for 3.1.1 and the
    worker's Receive Maximum, max(2 x concurrency, 8), for MQTT 5; Mosquitto 2.0.11 was measured
    to send between one and two windows' worth before it stops (the bound asserted here)."""
    app = TaskApp(settings=Settings.from_url(mosquitto.url, prefix=prefix, protocol=protocol))
    gate = threading.Event()

    @app.task
    def block() -> None:
        gate.wait(30)

    worker = Worker(app, concurrency=1, grace=1)
    try:
        with worker, app:
            for _ in range(200):
                app.send("block")
            assert app.flush(10)
            inside = lambda: worker.snapshot().waiting + len(worker.held)  # noqa: E731
            wait_until(lambda: inside() >= window - 1, message=f"{inside()} inside")
            time.sleep(0.5)  # a negative check: give the broker the chance to overrun the window
            assert inside() <= 2 * window, f"{inside()} messages inside the worker, window {window}"
    finally:
        gate.set()
