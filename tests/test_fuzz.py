"""Property-based fuzzing (hypothesis) of every place input arrives.

- the codec: random bytes, random JSON, mutated valid tasks -> a model or ``DecodeError``, never
  anything else;
- the worker's receive path: ``Worker.receive`` (what paho's network thread calls, which decides
  and acks) fed ``transport.Message`` objects, with a recording connection injected
  (``Worker(connection=...)``): every input ends in exactly one outcome (one error report and
  nothing run, or a status flow), is acknowledged exactly once, and a good task afterwards still
  runs; plus one run through a real Worker on Mosquitto.

CI-sized (a few hundred examples, well under a minute); ``python bench/fuzz_long.py`` runs the
same properties on 100,000 inputs (result in docs/security.md).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqtt_tasks import DecodeError, Settings, TaskApp, Worker
from mqtt_tasks.errors import PayloadTooLargeError
from mqtt_tasks.protocol import codec, events
from mqtt_tasks.protocol.topics import Topics
from mqtt_tasks.transport import Connection, Message
from tests.brokers import MosquittoProcess, wait_until

PREFIX = "fz"
TOPICS = Topics(PREFIX)
MAX_PAYLOAD = 4096

# -- strategies ---------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
FIELDS = ["id", "task", "args", "kwargs", "attempt", "max_attempts", "timeout", "reply_to", "correlation",
          "expires_at", "queue", "sig"]
GOOD = {"id": "good-1", "task": "echo", "args": [1, "two"], "kwargs": {"k": None}}


@st.composite
def mutated_tasks(draw: st.DrawFn) -> bytes:
    """A valid task with fields removed, replaced by random JSON, or added; sometimes truncated bytes."""
    task: dict[str, Any] = dict(GOOD, id=draw(st.from_regex(r"\A[A-Za-z0-9_.:\-]{1,20}\Z")))
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(FIELDS) | st.text(max_size=6))
        if draw(st.booleans()):
            task.pop(name, None)
        else:
            task[name] = draw(json_values)
    payload = json.dumps(task).encode()
    cut = draw(st.integers(0, 3))
    return payload[: len(payload) - cut] if cut else payload


def any_payload() -> st.SearchStrategy[bytes]:
    return (st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()) | mutated_tasks()
            | st.just(b"x" * (MAX_PAYLOAD + 1)))


# -- the codec ----------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(any_payload())
def test_decoders_raise_only_decode_error(payload: bytes) -> None:
    for decode in (codec.decode_task, codec.decode_status, codec.decode_worker_state, codec.decode_json_object):
        try:
            decode(payload, max_payload=MAX_PAYLOAD)
        except DecodeError as exc:
            assert exc.reason and "\n" not in exc.reason  # one readable line for the error report
            events.error_report(component="t", reason=exc.reason, ts=0.0, payload=payload)  # and it reports


# -- the worker's receive path, through the dispatcher method ---------------------------------------

class RecordingConnection:
    """Stands in for ``transport.Connection``: records publishes and acks, enforces the payload cap."""

    def __init__(self, max_payload: int) -> None:
        self.max_payload = max_payload
        self.published: list[tuple[str, bytes]] = []
        self.acked: list[int] = []
        self._lock = threading.Lock()
        self.connected = True

    def publish(self, topic: str, payload: bytes, **_: Any) -> int:
        if len(payload) > self.max_payload:
            raise PayloadTooLargeError(len(payload), self.max_payload, topic=topic)
        with self._lock:
            self.published.append((topic, payload))
            return len(self.published)

    def ack(self, message: Message) -> None:
        with self._lock:
            self.acked.append(message.mid)

    def ack_many(self, messages: list[Message]) -> None:
        for message in messages:
            self.ack(message)

    def since(self, start: int) -> list[tuple[str, bytes]]:
        with self._lock:
            return self.published[start:]

    def held_writes(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def subscribe(self, *_: Any) -> None: ...
    def unsubscribe(self, *_: Any) -> None: ...
    def flush(self, *_: Any) -> bool: return True
    def close(self, *_: Any) -> None: ...


class Harness:
    """A Worker whose dispatcher is driven synchronously, one message at a time."""

    def __init__(self, *, signing_key: str | None = None) -> None:
        self.app = TaskApp(settings=Settings.from_url("mqtt://127.0.0.1:1", prefix=PREFIX,
                                                      max_payload=MAX_PAYLOAD, signing_key=signing_key))
        self.ran: list[Any] = []

        @self.app.task
        def echo(*args: Any, **kwargs: Any) -> Any:
            self.ran.append((args, kwargs))
            return [list(args), kwargs]

        self.conn = RecordingConnection(MAX_PAYLOAD)
        self.worker = Worker(self.app, worker_id="fuzz-w", concurrency=2, connection=self.conn)  # type: ignore[arg-type]
        self.mid = 0

    def feed(self, topic: str, payload: bytes, qos: int = 1) -> list[tuple[str, bytes]]:
        """Deliver one message; return what the worker published about it once it settled."""
        self.mid += 1
        start = len(self.conn.published)
        self.worker.receive(Message(topic, payload, qos, False, self.mid, 0))  # as paho's thread does
        wait_until(lambda: self._settled(start), timeout=5, interval=0.001,
                   message=f"no outcome for {payload[:80]!r}")
        self._drain_releases()
        return self.conn.since(start)

    def _settled(self, start: int) -> bool:
        out = self.conn.since(start)
        if any(t == TOPICS.errors for t, _ in out):
            return True
        return any(t.startswith(TOPICS.status_root) and json.loads(p).get("state") != "started" for t, p in out)

    def _drain_releases(self) -> None:
        wait_until(lambda: self.worker.snapshot().free == self.worker.concurrency, timeout=5, interval=0.001,
                   message="a slot was never given back")

    def close(self) -> None:
        self.worker.stop()  # never started: releases the pool only


def check_one_outcome(h: Harness, payload: bytes) -> None:
    acks_before = len(h.conn.acked)
    out = h.feed(TOPICS.tasks("default"), payload)
    errors = [p for t, p in out if t == TOPICS.errors and b"refusing to reply" not in p]
    statuses = [json.loads(p) for t, p in out if t.startswith(TOPICS.status_root)]
    assert len(h.conn.acked) == acks_before + 1, "every task message is acknowledged exactly once"
    if errors:
        assert len(errors) == 1 and not statuses, (payload, out)
        report = json.loads(errors[0])
        assert report["component"] == "worker" and report["reason"]
    else:
        finals = [s for s in statuses if s["state"] in ("succeeded", "failed", "expired")]
        assert len(finals) == 1, (payload, out)


@pytest.fixture(scope="module")
def harness() -> Any:
    h = Harness()
    yield h
    h.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(any_payload())
def test_worker_receive_path_one_outcome_per_input(harness: Harness, payload: bytes) -> None:
    check_one_outcome(harness, payload)
    good = dict(GOOD, id=f"after-{harness.mid}")
    out = harness.feed(TOPICS.tasks("default"), json.dumps(good).encode())
    assert any(json.loads(p).get("state") == "succeeded" for t, p in out if t == TOPICS.status(good["id"]))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_control_and_presence_inputs_never_break_the_worker(harness: Harness, payload: bytes) -> None:
    for topic in (TOPICS.control("fuzz-w"), TOPICS.coordinator):
        before = len(harness.conn.acked)
        harness.worker.receive(Message(topic, payload, 1, False, 0, 0))
        assert len(harness.conn.acked) == before + 1  # acknowledged, so it never holds an in-flight slot
    harness.worker.receive(Message(TOPICS.coordinator, b"", 1, True, 0, 0))  # an empty retained presence: offline
    assert not harness.worker.coordinator_online
    out = harness.feed(TOPICS.tasks("default"), json.dumps(dict(GOOD, id="after-ctl")).encode())
    assert any(json.loads(p).get("state") == "succeeded" for _, p in out)


@settings(max_examples=100, deadline=None)
@given(mutated_tasks())
def test_signed_worker_one_outcome_per_input(payload: bytes) -> None:
    h = Harness(signing_key="s" * 32)
    try:
        check_one_outcome(h, payload)
    finally:
        h.close()


# -- a real Worker on Mosquitto ------------------------------------------------------------------

def test_real_worker_survives_garbage(mosquitto: MosquittoProcess, prefix: str) -> None:
    topics = Topics(prefix)
    app = TaskApp(settings=Settings.from_url(mosquitto.url, prefix=prefix))

    @app.task
    def echo(x: Any) -> Any:
        return x

    reports: list[bytes] = []
    watch = Connection(Settings.from_url(mosquitto.url), "watch", on_message=lambda m: reports.append(m.payload))
    watch.subscribe(topics.errors)
    watch.connect()
    raw = Connection(Settings.from_url(mosquitto.url, max_payload=1024 * 1024), "garbage").connect()
    garbage = [b"", b"\xff\xfe", b"null", b"[]", b'{"id":1}', b'{"id":"a/b","task":"echo"}', b"{" * 5000,
               b'{"id":"x","task":"echo","args":{}}', b"x" * (300 * 1024), json.dumps({"id": "y" * 200}).encode()]
    try:
        with Worker(app, concurrency=2), app:
            for g in garbage:
                raw.publish(topics.tasks("default"), g)
            wait_until(lambda: len(reports) >= len(garbage), message=f"{len(reports)} reports")
            assert echo.submit({"still": "works"}).result(timeout=10) == {"still": "works"}
            assert len(reports) == len(garbage)
    finally:
        raw.close(1.0)
        watch.close(1.0)


class ConnectingRecorder(RecordingConnection):
    """A recording connection a Coordinator can start with."""

    def connect(self, *_: Any) -> ConnectingRecorder:
        return self


class CoordinatorHarness:
    """A running Coordinator with a recording connection injected (``Coordinator(connection=...)``),
    fed through ``Coordinator.receive`` as the network thread feeds it."""

    def __init__(self) -> None:
        from mqtt_tasks.coordinator import Coordinator

        self.conn = ConnectingRecorder(MAX_PAYLOAD)
        settings_ = Settings.from_url("mqtt://127.0.0.1:1", prefix=PREFIX, max_payload=MAX_PAYLOAD)
        self.coordinator = Coordinator(settings_, connection=self.conn)  # type: ignore[arg-type]
        self.coordinator.start()
        self.coordinator.connected(True)
        self.mid = 0

    def feed(self, topic: str, payload: bytes, *, then_ask: str = "good-1") -> tuple[list[tuple[str, bytes]], Any]:
        """Deliver one message, then a status query for ``then_ask``; return what was published
        about the message (everything before the answer, which comes after it), and the answer."""
        self.mid += 1
        start = len(self.conn.published)
        self.coordinator.receive(Message(topic, payload, 1, False, self.mid, 0))
        reply_to = TOPICS.replies(f"fuzz-{self.mid}")
        query = {"op": "status", "id": then_ask, "reply_to": reply_to}
        self.coordinator.receive(Message(TOPICS.rpc, json.dumps(query).encode(), 1, False, 0, 0))
        wait_until(lambda: any(t == reply_to for t, _ in self.conn.since(start)), timeout=5, interval=0.001,
                   message=f"no answer after {payload[:80]!r}")
        out = self.conn.since(start)
        at = [t for t, _ in out].index(reply_to)
        return out[:at], json.loads(out[at][1])


@pytest.fixture(scope="module")
def coordinator() -> Any:
    h = CoordinatorHarness()
    yield h
    h.coordinator.stop()


COORDINATOR_INPUTS = {  # topic -> the decoder that must reject a payload for a report to be due
    TOPICS.tasks("default"): codec.decode_task,
    TOPICS.status("good-1"): codec.decode_status,
    TOPICS.worker("w9"): codec.decode_worker_state,
    TOPICS.rpc: codec.decode_json_object,
}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(any_payload())
def test_coordinator_receive_path_one_report_per_rejected_input(coordinator: CoordinatorHarness,
                                                                payload: bytes) -> None:
    for topic, decoder in COORDINATOR_INPUTS.items():
        out, _ = coordinator.feed(topic, payload)
        reports = [t for t, _ in out if t == TOPICS.errors]
        try:
            decoder(payload, max_payload=MAX_PAYLOAD)
            rejected = False
        except DecodeError:
            rejected = not (payload == b"" and topic == TOPICS.worker("w9"))  # empty: a cleared retained state
        assert len(reports) == 1 if rejected else len(reports) <= 1, (topic, payload, out)
    good_id = f"coord-good-{coordinator.mid}-{time.monotonic_ns()}"
    _, answer = coordinator.feed(TOPICS.tasks("default"), json.dumps(dict(GOOD, id=good_id)).encode(),
                                 then_ask=good_id)
    assert answer["ok"] and answer["task"]["id"] == good_id  # the next good task is still recorded
