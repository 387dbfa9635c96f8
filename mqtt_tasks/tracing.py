"""Tracing: OpenTelemetry's W3C trace context carried producer -> coordinator -> worker -> result.

Optional (extra ``mqtt-tasks[tracing]``): with ``opentelemetry-api`` not installed every function
here is a no-op and nothing of it is imported. Built on these facts:

- The carrier is MQTT 5 User Properties named ``traceparent`` and ``tracestate`` (the W3C
  "trace context for MQTT" convention), and the task fields of the same names, because MQTT 3.1.1
  has no properties and the coordinator re-dispatches a task from its record (which keeps the
  body, not the properties). A worker reads the properties first, then the fields.
- The producer's ``send`` is a span of kind PRODUCER; its context is what travels. The coordinator
  keeps it in its record; each task it dispatches to a worker (a retry, a re-dispatch, the
  backlog) is a ``dispatch`` span of its own, a child of the send, whose context the dispatched
  copy carries (body and properties). So the first attempt taken from the shared topic is a
  child of the send, and every attempt the coordinator hands out a child of its dispatch.
- One span per attempt, of kind CONSUMER, started when the worker starts the attempt and ended
  when its last event is published (``succeeded``, ``failed``, handed back); it is the current
  span inside the task body, so spans the body makes are its children. The attempt's status
  events and its reply carry the attempt span's context as User Properties.
- Spans are recorded only where the application configured an OpenTelemetry SDK; with the API
  alone they are non-recording and only a context that came with a task is passed on. Where there
  is neither an SDK nor a context, no span is made at all (``recording``, ``sending_traced``).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
FIELDS = (TRACEPARENT, TRACESTATE)
TRACER_NAME = "mqtt_tasks"
MAX_OPEN_ATTEMPTS = 10_000

UserProperties = list[tuple[str, str]]

_otel: Any = None
_checked = False
_lock = threading.Lock()


def _api() -> Any:
    """The ``opentelemetry`` API modules (trace, propagate), or None when not installed."""
    global _otel, _checked
    if not _checked:
        with _lock:
            try:
                from opentelemetry import propagate, trace

                _otel = (trace, propagate)
            except ImportError:
                _otel = None
            _checked = True
    return _otel


def available() -> bool:
    return _api() is not None


def recording() -> bool:
    """Whether the application configured a tracer provider (an SDK): otherwise spans are not
    recorded, and one is made only to pass on a context that came with a task."""
    api = _api()
    if api is None:
        return False
    trace = api[0]
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def sending_traced() -> bool:
    """Whether a send gets a span: tracing is configured, or a span is current where it is sent."""
    api = _api()
    return api is not None and (recording() or api[0].get_current_span().get_span_context().is_valid)


def carrier_of(user_properties: Any, body: Mapping[str, Any]) -> dict[str, str]:
    """The trace context of a received task: its User Properties, else its body's fields."""
    found = {k: v for k, v in (user_properties or ()) if k in FIELDS and isinstance(v, str)}
    if TRACEPARENT not in found:
        found = {k: body[k] for k in FIELDS if isinstance(body.get(k), str)}
    return found


def properties_of(carrier: Mapping[str, str]) -> UserProperties:
    return [(k, carrier[k]) for k in FIELDS if k in carrier]


@contextmanager
def send_span(name: str, task_id: str, queue: str) -> Iterator[dict[str, str]]:
    """The producer's span around publishing one task; yields the context to carry (empty without
    OpenTelemetry)."""
    api = _api()
    if api is None:
        yield {}
        return
    trace, propagate = api
    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(f"send {name}", kind=trace.SpanKind.PRODUCER,
                                      attributes=_attributes(name, task_id, queue, None)):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield carrier


def dispatch_context(body: Mapping[str, Any], worker: str) -> dict[str, str]:
    """The coordinator's dispatch of a recorded task as a span (kind PRODUCER, a child of the task's
    context, ended at once); the context the dispatched copy carries instead. Empty where nothing
    is recorded or no context came with the task: the body's own fields then travel unchanged."""
    carrier = {k: body[k] for k in FIELDS if isinstance(body.get(k), str)}
    if not carrier or not recording():
        return {}
    trace, propagate = _api()
    name, queue = str(body.get("task")), str(body.get("queue") or "default")
    span = trace.get_tracer(TRACER_NAME).start_span(
        f"dispatch {name}", context=propagate.extract(carrier), kind=trace.SpanKind.PRODUCER,
        attributes={**_attributes(name, str(body.get("id")), queue, int(body.get("attempt") or 1)),
                    "mqtt_tasks.worker": worker})
    span.end()
    dispatched: dict[str, str] = {}
    propagate.inject(dispatched, context=trace.set_span_in_context(span))
    return dispatched


def _attributes(name: str, task_id: str, queue: str, attempt: int | None) -> dict[str, Any]:
    attributes: dict[str, Any] = {"messaging.system": "mqtt", "messaging.destination.name": queue,
                                  "messaging.message.id": task_id, "mqtt_tasks.task": name}
    if attempt is not None:
        attributes["mqtt_tasks.attempt"] = attempt
    return attributes


class Attempts:
    """The worker's spans, one per attempt held, keyed by (task id, attempt). Thread-safe: begun on
    the network thread, made current in the task's thread, ended by whoever publishes its last
    event. At most ``MAX_OPEN_ATTEMPTS`` are kept (an attempt whose end never came is dropped)."""

    def __init__(self, worker_id: str) -> None:
        self._worker_id = worker_id
        self._spans: dict[tuple[str, int], Any] = {}
        self._lock = threading.Lock()

    @staticmethod
    def create(worker_id: str) -> Attempts | None:
        return Attempts(worker_id) if available() else None

    def begin(self, task: Mapping[str, Any], user_properties: Any) -> None:
        carrier = carrier_of(user_properties, task)
        if not carrier and not recording():
            return  # nothing to record and no context to pass on: no span, no cost
        trace, propagate = _api()
        parent = propagate.extract(carrier)
        name, queue = str(task.get("task")), str(task.get("queue") or "default")
        span = trace.get_tracer(TRACER_NAME).start_span(
            f"run {name}", context=parent, kind=trace.SpanKind.CONSUMER,
            attributes={**_attributes(name, str(task["id"]), queue, int(task.get("attempt") or 1)),
                        "mqtt_tasks.worker": self._worker_id})
        with self._lock:
            if len(self._spans) >= MAX_OPEN_ATTEMPTS:
                self._spans.pop(next(iter(self._spans)))
            self._spans[_key(task)] = span

    def wrap(self, task: Mapping[str, Any], fn: Callable[..., Any], is_async: bool) -> Callable[..., Any]:
        """``fn``, run with the attempt's span as the current span."""
        with self._lock:
            span = self._spans.get(_key(task))
        if span is None:
            return fn
        trace, _ = _api()
        if is_async:
            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
                    try:
                        return await fn(*args, **kwargs)
                    except BaseException as exc:
                        _record(span, exc)
                        raise
            return run_async

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
                try:
                    return fn(*args, **kwargs)
                except BaseException as exc:
                    _record(span, exc)
                    raise
        return run

    def properties(self, task: Mapping[str, Any]) -> UserProperties | None:
        """The attempt span's context as User Properties, for its status events and reply."""
        with self._lock:
            span = self._spans.get(_key(task))
        if span is None:
            return None
        trace, propagate = _api()
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        return properties_of(carrier) or None

    def end(self, task: Mapping[str, Any], state: str, error: Mapping[str, Any] | None = None) -> None:
        with self._lock:
            span = self._spans.pop(_key(task), None)
        if span is None:
            return
        trace, _ = _api()
        span.set_attribute("mqtt_tasks.state", state)
        if error is not None:
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"{error.get('type')}: {error.get('message')}"))
        span.end()

    def __len__(self) -> int:
        return len(self._spans)



def _record(span: Any, exc: BaseException) -> None:
    """The task's exception on its span; an exception that cannot be described (its ``__str__``
    raises) must still reach the worker's report as itself, not as the recorder's error."""
    try:
        span.record_exception(exc)
    except Exception:  # noqa: BLE001
        logging.getLogger(__name__).debug("could not record %s on the span", type(exc).__name__, exc_info=True)


def _key(task: Mapping[str, Any]) -> tuple[str, int]:
    return str(task.get("id")), int(task.get("attempt") or 1)
