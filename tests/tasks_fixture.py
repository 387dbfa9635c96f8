"""Tasks, a TaskApp factory and plain-MQTT helpers for the library and worker tests.

- `make_app(url, prefix)` builds a `TaskApp` with the tasks below registered; the tasks report
  to the app's `Probe` (`app_probe(app)`) so a test can wait on "task X started" and hold a task
  until it releases it, instead of sleeping.
- `Harness`: one test's app, workers and plain listeners, all closed at exit.
- `Listener`: a plain paho client (MQTT 3.1.1 or 5) that records what arrives on its topics.
- `run_worker(...)`: the body of a worker *process* (`python -c` in test_worker_processes.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqtt_tasks import TaskApp, Worker

DEADLINE = 20.0
"""Upper bound for anything a test waits on; a passing test never gets near it."""


class Probe:
    """What the tasks of one app report: who started, how many run at once; a gate they wait on."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self._cond = threading.Condition()
        self.started: list[str] = []
        self.running = 0
        self.max_running = 0
        self.finished: list[str] = []

    def enter(self, key: str) -> None:
        with self._cond:
            self.started.append(key)
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self._cond.notify_all()

    def leave(self, key: str) -> None:
        with self._cond:
            self.running -= 1
            self.finished.append(key)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[Probe], bool], timeout: float = DEADLINE, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"probe: {what or predicate} not reached within {timeout}s "
                                         f"(started={self.started}, finished={self.finished})")
                self._cond.wait(left)

    def wait_started(self, *keys: str, timeout: float = DEADLINE) -> None:
        self.wait_for(lambda p: all(k in p.started for k in keys), timeout, f"started {keys}")


def make_app(url: str, prefix: str, **kwargs: Any) -> TaskApp:
    """A TaskApp on `url` / `prefix` with every test task registered."""
    app = TaskApp(broker=url, prefix=prefix, **kwargs)
    probe = Probe()
    app.probe = probe  # type: ignore[attr-defined]
    _register_plain(app)
    _register_probed(app, probe)
    return app


class Unprintable(Exception):
    """An exception that cannot even be described: its ``__str__`` raises."""

    def __str__(self) -> str:
        raise RuntimeError("no words for it")


def _register_plain(app: TaskApp) -> None:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    @app.task
    def scale(x: float, *, factor: float = 1, offset: float = 0) -> float:
        return x * factor + offset

    @app.task(name="math.mul", queue="math")
    def mul(a: int, b: int) -> int:
        return a * b

    @app.task
    def boom(message: str) -> None:
        raise ValueError(message)

    @app.task
    def unprintable() -> None:
        raise Unprintable()

    @app.task
    async def async_add(a: int, b: int) -> int:
        await asyncio.sleep(0.01)
        return a + b

    @app.task
    def unserialisable() -> Any:
        return {1, 2, 3}

    @app.task
    def whoami() -> int:
        return os.getpid()


def _register_probed(app: TaskApp, probe: Probe) -> None:
    """Tasks that report to the probe: started, running at once, finished."""

    @app.task
    def spin(seconds: float) -> str:
        """Pure-Python busy loop: the time limit's exception can interrupt it."""
        probe.enter("spin")
        try:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                pass
            return "done"
        finally:
            probe.leave("spin")

    @app.task
    async def async_nap(seconds: float) -> str:
        probe.enter("async_nap")
        try:
            await asyncio.sleep(seconds)
            return "done"
        finally:
            probe.leave("async_nap")

    @app.task
    def hold(key: str) -> str:
        """Start, then wait until the test opens the gate (bounded)."""
        probe.enter(key)
        try:
            if not probe.gate.wait(DEADLINE):
                raise TimeoutError("the test never opened the gate")
            return key
        finally:
            probe.leave(key)

    @app.task
    def tracked(key: str, seconds: float) -> str:
        """Counts how many run at once; `seconds` of simulated work."""
        probe.enter(key)
        try:
            threading.Event().wait(seconds)
            return key
        finally:
            probe.leave(key)


def app_probe(app: TaskApp) -> Probe:
    probe: Probe = app.probe  # type: ignore[attr-defined]
    return probe


# -- plain MQTT clients ------------------------------------------------------------------------------


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    correlation_data: bytes | None = None

    def json(self) -> Any:
        return json.loads(self.payload)


def _host_port(url: str) -> tuple[str, int]:
    rest = url.split("://", 1)[-1]
    host, _, port = rest.rpartition(":")
    return host, int(port)


class Listener:
    """A plain paho client (no mqtt_tasks code) that records every message on its topics."""

    def __init__(self, url: str, topics: Iterable[str] = (), *, mqtt5: bool = False,
                 client_id: str | None = None) -> None:
        self.host, self.port = _host_port(url)
        self.mqtt5 = mqtt5
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._connected = threading.Event()
        self._topics = list(topics)
        protocol = paho.MQTTv5 if mqtt5 else paho.MQTTv311
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"plain-{uuid.uuid4().hex[:8]}",
                                  protocol=protocol)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)

    def start(self) -> Listener:
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        assert self._connected.wait(DEADLINE), "plain client did not connect"
        if self._topics:
            self.subscribe(*self._topics)
        return self

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if self._connected.is_set() and self._topics:  # a reconnect: paho does not restore subscriptions
            client.subscribe([(t, 1) for t in self._topics])
        self._connected.set()

    def subscribe(self, *topics: str) -> None:
        self._topics = list(dict.fromkeys([*self._topics, *topics]))
        self._subscribed.clear()
        self.client.subscribe([(t, 1) for t in topics])
        assert self._subscribed.wait(DEADLINE), f"no SUBACK for {topics}"

    def publish(self, topic: str, payload: bytes | str, *, response_topic: str | None = None,
                correlation_data: bytes | None = None, retain: bool = False) -> None:
        props = None
        if self.mqtt5 and (response_topic or correlation_data):
            props = Properties(PacketTypes.PUBLISH)
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation_data:
                props.CorrelationData = correlation_data
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=props)
        info.wait_for_publish(DEADLINE)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        corr = getattr(props, "CorrelationData", None) if props is not None else None
        with self._cond:
            self.messages.append(Received(msg.topic, msg.payload, bool(msg.retain), corr))
            self._cond.notify_all()

    def on(self, topic: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def wait_for(self, predicate: Callable[[list[Received]], Any], timeout: float = DEADLINE,
                 what: str = "") -> Any:
        """Wait until `predicate(messages)` is truthy; return its value."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(list(self.messages))
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(m.topic, m.payload[:200]) for m in self.messages][-10:]
                    raise AssertionError(f"{what or 'condition'} not met within {timeout}s; last seen: {seen}")
                self._cond.wait(left)

    def wait_json(self, topic: str, predicate: Callable[[Any], bool] = lambda _: True,
                  timeout: float = DEADLINE) -> Any:
        """The first JSON message on `topic` that satisfies `predicate`."""
        def find(messages: list[Received]) -> Any:
            for m in messages:
                if m.topic == topic and m.payload:
                    value = m.json()
                    if predicate(value):
                        return value
            return None
        return self.wait_for(find, timeout, f"a matching message on {topic}")

    def wait_finished(self, topics: Iterable[str], timeout: float = DEADLINE) -> None:
        """Wait until each status topic carried its final event. Events of one task come from one
        publisher in order, so everything before that event has arrived too."""
        wanted = set(topics)

        def done(messages: list[Received]) -> bool:
            finished = {m.topic for m in messages if m.topic in wanted and m.json().get("final")}
            return finished == wanted
        self.wait_for(done, timeout, f"final events on {len(wanted)} status topics")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Harness:
    """One test's app (producer + registry), its workers and plain listeners; closed at exit."""

    url: str
    prefix: str
    app: TaskApp = field(init=False)
    workers: list[Worker] = field(default_factory=list)
    listeners: list[Listener] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.app = make_app(self.url, self.prefix)

    @property
    def probe(self) -> Probe:
        return app_probe(self.app)

    @property
    def topics(self) -> Any:
        return self.app.topics

    def worker(self, **kwargs: Any) -> Worker:
        kwargs.setdefault("heartbeat_s", 0.2)
        kwargs.setdefault("grace", 5.0)
        worker = Worker(self.app, **kwargs)
        self.workers.append(worker)
        return worker.start()

    def listener(self, *topics: str, mqtt5: bool = False) -> Listener:
        listener = Listener(self.url, topics, mqtt5=mqtt5)
        self.listeners.append(listener)
        return listener.start()

    def close(self) -> None:
        self.probe.gate.set()
        for worker in self.workers:
            worker.stop(grace=2.0)
        self.app.close()
        for listener in self.listeners:
            listener.close()

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- a worker process ---------------------------------------------------------------------------------


def run_worker(url: str, prefix: str, worker_id: str, concurrency: int = 2, heartbeat_s: float = 0.2) -> None:
    """Run one Worker until SIGTERM; print READY once it takes tasks (for the parent test)."""
    app = make_app(url, prefix)
    worker = Worker(app, worker_id=worker_id, concurrency=concurrency, heartbeat_s=heartbeat_s, grace=5.0)

    def on_term(signum: int, frame: Any) -> None:
        threading.Thread(target=worker.stop, name="stopper").start()

    signal.signal(signal.SIGTERM, on_term)
    worker.start()
    print(f"READY {worker_id}", flush=True)
    worker.run()
    app.close()
    sys.exit(0)


# Payloads that are not valid tasks, and a word of the reason each must be rejected with.
BAD_TASKS = {
    "not-json": (b"this is not json", "not valid JSON"),
    "not-utf8": (b'{"id":"a","task":"add","args":["\xff\xfe"]}', ""),
    "array": (b'[{"id":"a","task":"add"}]', "expected a JSON object"),
    "missing-id": (b'{"task":"add"}', "missing required field 'id'"),
    "missing-task": (b'{"id":"a1"}', "missing required field 'task'"),
    "id-slash": (b'{"id":"a/b","task":"add"}', "field 'id'"),
    "id-hash": (b'{"id":"a#","task":"add"}', "field 'id'"),
    "id-200": (json.dumps({"id": "x" * 200, "task": "add"}).encode(), "field 'id'"),
    "args-object": (b'{"id":"a1","task":"add","args":{"a":1}}', "field 'args'"),
    "kwargs-array": (b'{"id":"a1","task":"add","kwargs":[1]}', "field 'kwargs'"),
    "attempt-zero": (b'{"id":"a1","task":"add","attempt":0}', "field 'attempt'"),
    "reply-to-wildcard": (b'{"id":"a1","task":"add","reply_to":"x/#"}', "field 'reply_to'"),
}
