"""Tracing: the W3C trace context from producer to coordinator to worker to result, with the
OpenTelemetry SDK's in-memory exporter, against real brokers (MQTT 5 User Properties on Mosquitto,
the task's own fields on MQTT 3.1.1, which is what amqtt speaks)."""

from __future__ import annotations

import json
import queue
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from mqtt_tasks import tracing  # noqa: E402
from mqtt_tasks.app import TaskApp  # noqa: E402
from mqtt_tasks.errors import TaskDeadError  # noqa: E402
from mqtt_tasks.transport import Connection, Message  # noqa: E402
from mqtt_tasks.worker import Worker  # noqa: E402
from tests.brokers import MosquittoProcess, wait_until  # noqa: E402
from tests.coord_helpers import HB, coordinator, settings  # noqa: E402

_EXPORTER = InMemorySpanExporter()


class _WhileTesting(SimpleSpanProcessor):
    """Exports only during a test of this module: the provider outlives it (OpenTelemetry sets one
    per process), and the tests after it must not pile spans up."""

    active = False

    def on_end(self, span: ReadableSpan) -> None:
        if self.active:
            super().on_end(span)


_PROCESSOR = _WhileTesting(_EXPORTER)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The spans this test made."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(_PROCESSOR)
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    _PROCESSOR.active = True
    try:
        yield _EXPORTER
    finally:
        _PROCESSOR.active = False
        _EXPORTER.clear()


def traced_app(url: str, prefix: str) -> TaskApp:
    app = TaskApp(settings=settings(url, prefix))

    @app.task(name="traced")
    def traced(x: int) -> int:
        with trace.get_tracer("test").start_as_current_span("inside"):
            return x * 2

    @app.task(name="fails", max_attempts=2)
    def fails() -> None:
        raise RuntimeError("nope")

    return app


def by_name(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def listen(url: str, prefix: str, topic: str) -> tuple[Connection, queue.SimpleQueue[Message]]:
    got: queue.SimpleQueue[Message] = queue.SimpleQueue()
    conn = Connection(settings(url, prefix), f"trace-listener-{uuid.uuid4().hex[:8]}", on_message=got.put)
    conn.subscribe(topic)
    conn.connect()
    return conn, got


def test_one_trace_from_the_producer_through_the_attempt_to_the_result(spans: Any, broker_url: str, broker_kind: str,
                                                                         prefix: str) -> None:
    app = traced_app(broker_url, prefix)
    listener, events = listen(broker_url, prefix, f"{prefix}/status/+")
    with Worker(app, concurrency=2, worker_id="tw1", heartbeat_s=HB, started_after=0) as _w, app:
        with trace.get_tracer("test").start_as_current_span("request") as request:
            handle = app.send("traced", [21])
        assert handle.result(10) == 42
        ended = wait_until(lambda: by_name(spans, "run traced"), timeout=5, message="no attempt span ended")
    send, = by_name(spans, "send traced")
    run, = ended
    inside, = by_name(spans, "inside")
    trace_id = request.get_span_context().trace_id
    assert {send.context.trace_id, run.context.trace_id, inside.context.trace_id} == {trace_id}
    assert send.parent is not None and send.parent.span_id == request.get_span_context().span_id
    assert run.parent is not None and run.parent.span_id == send.context.span_id  # across the broker
    assert inside.parent is not None and inside.parent.span_id == run.context.span_id  # the body's own span
    assert send.kind == trace.SpanKind.PRODUCER and run.kind == trace.SpanKind.CONSUMER
    assert run.attributes is not None and run.attributes["mqtt_tasks.attempt"] == 1
    assert run.attributes["mqtt_tasks.state"] == "succeeded"
    messages = []
    while not events.empty():
        messages.append(events.get())
    listener.close()
    assert {m.topic for m in messages} == {f"{prefix}/status/{handle.id}"} and len(messages) >= 2
    assert listener.is_mqtt5 == (broker_kind == "mosquitto")  # amqtt speaks 3.1.1: the body carries it there
    if listener.is_mqtt5:  # the events carry the attempt's context
        parents = {dict(m.user_properties).get("traceparent") for m in messages}
        assert parents == {f"00-{trace_id:032x}-{run.context.span_id:016x}-{int(run.context.trace_flags):02x}"}


def test_a_redispatched_attempt_joins_the_same_trace(spans: Any, mosquitto: MosquittoProcess, prefix: str) -> None:
    """The coordinator keeps the context in its record: the retry it dispatches joins the same trace."""
    app = traced_app(mosquitto.url, prefix)
    with coordinator(mosquitto.url, prefix), Worker(app, concurrency=2, worker_id="tw2", heartbeat_s=HB) as _w, app:
        handle = app.send("fails", [])
        with pytest.raises(TaskDeadError):
            handle.result(15)
        runs = wait_until(lambda: len(by_name(spans, "run fails")) == 2 and by_name(spans, "run fails"), timeout=5,
                          message="not two attempt spans")
    send, = by_name(spans, "send fails")
    dispatch, = by_name(spans, "dispatch fails")  # the retry, handed out by the coordinator
    first, second = sorted(runs, key=lambda r: r.attributes["mqtt_tasks.attempt"] if r.attributes else 0)
    assert dispatch.parent is not None and dispatch.parent.span_id == send.context.span_id
    assert dispatch.kind == trace.SpanKind.PRODUCER and dispatch.attributes is not None
    assert (dispatch.attributes["mqtt_tasks.attempt"], dispatch.attributes["mqtt_tasks.worker"]) == (2, "tw2")
    assert first.parent is not None and first.parent.span_id == send.context.span_id  # from the shared topic
    assert second.parent is not None and second.parent.span_id == dispatch.context.span_id
    for run in runs:
        assert run.context.trace_id == send.context.trace_id
        assert run.status.status_code == trace.StatusCode.ERROR and "nope" in (run.status.description or "")


def test_a_coordinator_without_the_key_dispatches_a_signed_task_as_it_was_signed(spans: Any) -> None:
    """Where tracing records, the dispatch replaces the task's context with its own span's; a signed
    task it cannot sign again keeps the producer's, else every worker with the key refuses it."""
    from opentelemetry import propagate

    from mqtt_tasks import Settings, leases, signing
    from mqtt_tasks.coordinator.backlog import Backlog
    from mqtt_tasks.coordinator.effects import Effects
    from mqtt_tasks.coordinator.fleet import Fleet
    from mqtt_tasks.protocol.topics import Topics
    from mqtt_tasks.store.base import TaskRecord

    key = "k" * 32
    context: dict[str, str] = {}
    with trace.get_tracer("test").start_as_current_span("request"):
        propagate.inject(context)
    assert tracing.recording() and context, "nothing recorded: the test would prove nothing"
    task = {"id": "t1", "task": "work", "args": [1], **context}
    policy, stats = leases.LeasePolicy(), dict.fromkeys(("cancels", "dead", "expired", "retried"), 0)
    for coordinator_key, body in ((None, signing.sign(task, key)), (key, signing.sign(task, key)), (None, task)):
        coordinator_settings = Settings.from_url("mqtt://127.0.0.1:1", prefix="P", signing_key=coordinator_key)
        effects = Effects(coordinator_settings, Topics("P"), "c", Backlog(policy, Fleet(policy), stats), lambda: 1.0,
                          stats)
        effects.dispatch(TaskRecord(id="t1", task="work", queue="q", attempt=2, body=body), "w1")
        (_, payload, _), = effects.take()
        sent = json.loads(payload)
        assert sent["attempt"] == 2
        if "sig" in body:
            signing.verify(sent, key)  # what a worker with the key does first
        moved = sent["traceparent"] != context["traceparent"]
        assert moved == (coordinator_key is not None or "sig" not in body), (coordinator_key, body)


def test_the_context_travels_in_the_body_and_properties_are_preferred() -> None:
    """Pure: which carrier a worker reads."""
    body = {"id": "a", "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    props = [("traceparent", "00-" + "3" * 32 + "-" + "4" * 16 + "-01"), ("other", "x")]
    assert tracing.carrier_of(props, body) == {"traceparent": props[0][1]}
    assert tracing.carrier_of((), body) == {"traceparent": body["traceparent"]}
    assert tracing.carrier_of(None, {"id": "a", "traceparent": 5}) == {}  # a wrong type reads as absent


def test_without_opentelemetry_nothing_is_added(monkeypatch: pytest.MonkeyPatch, mosquitto: MosquittoProcess,
                                                prefix: str) -> None:
    monkeypatch.setattr(tracing, "_otel", None)
    monkeypatch.setattr(tracing, "_checked", True)
    assert tracing.Attempts.create("w") is None
    listener, tasks = listen(mosquitto.url, prefix, f"{prefix}/tasks/+")
    with TaskApp(settings=settings(mosquitto.url, prefix)) as app:
        app.send("traced", [1])
        assert app.flush(5)
        message = tasks.get(timeout=5)
    listener.close()
    assert b"traceparent" not in message.payload and message.user_properties == ()


def test_with_the_api_alone_only_a_context_that_came_is_passed_on() -> None:
    """In a fresh process with no SDK configured: no span without a context; with one, it is kept."""
    import subprocess
    import sys

    from tests.coord_helpers import ROOT

    code = """
from mqtt_tasks import tracing
a = tracing.Attempts.create("w")
assert not tracing.recording() and not tracing.sending_traced()
a.begin({"id": "x", "task": "t", "attempt": 1}, ())
assert len(a) == 0 and a.properties({"id": "x", "attempt": 1}) is None
parent = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
a.begin({"id": "y", "task": "t", "attempt": 1, "traceparent": parent}, ())
props = dict(a.properties({"id": "y", "attempt": 1}))
assert props["traceparent"].startswith("00-" + "ab" * 16), props
a.end({"id": "y", "attempt": 1}, "succeeded")
assert len(a) == 0
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"})
    assert done.stdout.strip() == "ok", done.stderr
