"""Reporter: outcomes become status events, final events go to the task's reply topics, rejected
input becomes an error report. Every message is built by ``protocol.events``.

Facts it is built on:

- With a coordinator online it owns a failure's fate (retry with backoff, or ``dead``, which it
  sends to the reply topics): a ``failed`` event is final, and replied, only when no coordinator
  is online. ``succeeded`` and ``expired`` are always final. A cancelled attempt was superseded:
  never final here. ``failed`` events carry the ``max_attempts`` the worker applied (task field,
  else the registration's, else ``states.DEFAULT_MAX_ATTEMPTS``).
- Only final events go to the task's ``reply_to`` and its MQTT 5 Response Topic (with its
  Correlation Data echoed), and never onto the prefix's own topics: ``events.reply_refusal``
  decides, as for every component (docs/security.md).
- The library caps payloads below the broker's limit (an oversize publish makes paho re-send it
  forever, docs/broker-facts.md): a result too large to publish fails the attempt, finally, with
  ``PayloadTooLargeError``; a result that is not JSON fails it with ``TypeError``.
- The status event and the reply leave behind one wake-up of the network thread (``held_writes``).
- Publish first, forget second (see running.py); nothing about an attempt handed back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ..app import TaskDef
from ..errors import PayloadTooLargeError
from ..execution import Outcome
from ..protocol import codec, events
from ..protocol.states import DEFAULT_MAX_ATTEMPTS, DEFERRED, FAILED, SUCCEEDED
from ..protocol.topics import Topics
from ..protocol.validate import TaskData
from ..tracing import Attempts
from ..transport import Connection, Message
from .link import CoordinatorLink
from .outbox import Outbox
from .running import Running
from .stats import Counters

log = logging.getLogger(__name__)


class Reporter:
    """Publishes what became of each attempt, and what this worker rejected."""

    def __init__(self, worker_id: str, topics: Topics, conn: Connection | Outbox, registry: dict[str, TaskDef[Any]],
                 running: Running, link: CoordinatorLink, counters: Counters) -> None:
        self.worker_id = worker_id
        self._topics = topics
        self._conn = conn
        self._registry = registry
        self._running = running
        self._link = link
        self._counters = counters
        self.attempts: Attempts | None = None  # one span per attempt, where OpenTelemetry is installed

    def outcome(self, task: TaskData, message: Message, outcome: Outcome) -> None:
        """An attempt's run ended (task threads, the event loop, or intake for an unknown task).
        An attempt handed back when the worker's grace ran out is no longer this worker's to
        report: its outcome is dropped (see running.py)."""
        if not self._running.begin_finish(task):
            log.info("worker %s: task %s %s attempt %d was handed back; its outcome (%s) is dropped",
                     self.worker_id, task.task, task.id, task.attempt,
                     "succeeded" if outcome.ok else outcome.error_type)
            return
        if outcome.ok:
            self._counters.add(SUCCEEDED)
            extra = {"result": outcome.value}
            state = SUCCEEDED
            if log.isEnabledFor(logging.INFO):  # one line per task, as Celery's: mqtt-worker logs at INFO
                log.info("worker %s: %s[%s] succeeded in %s (attempt %d)", self.worker_id, task.task, task.id,
                         _seconds(self._running.ran_for(task)), task.attempt)
        else:
            self._counters.add(FAILED)
            extra = {"error": events.error_info(outcome.error_type, outcome.error_message, outcome.traceback or None),
                     "max_attempts": self.max_attempts(task)}
            state = FAILED
            log.info("worker %s: %s[%s] failed in %s (attempt %d): %s: %s", self.worker_id, task.task, task.id,
                     _seconds(self._running.ran_for(task)), task.attempt, outcome.error_type, outcome.error_message)
        # With a coordinator online it owns a failure's fate (retry, or `dead` to the reply topic).
        final = state == SUCCEEDED or not self._link.online
        if outcome.cancelled:
            final = False  # a superseded attempt: the coordinator owns the task's fate
        self._publish_last(task, message, state, extra, final=final)

    def finish(self, task: TaskData, message: Message, state: str, extra: dict[str, Any], *, final: bool) -> None:
        """Publish an attempt's last event (and the reply, if final), then stop holding it."""
        if self._running.begin_finish(task):
            self._publish_last(task, message, state, extra, final=final)

    def _publish_last(self, task: TaskData, message: Message, state: str, extra: dict[str, Any], *,
                      final: bool) -> None:
        with self._conn.held_writes():  # the status event and the reply behind one wake-up
            payload = self.status(task, state, {**extra, "final": final or None})
            if final and payload is not None:
                self.reply(task, message, payload)
        self._running.forget(task)
        self.end_attempt(task, state, extra.get("error"))

    def defer(self, task: TaskData, reason: str, *, delayed: bool = False, routed: bool = False,
              extra: dict[str, Any] | None = None) -> None:
        """Hand a task that has not started to the coordinator: ``deferred``, with the whole task
        (``delayed``: because its ``not_before`` is ahead or it has a rate limit; ``routed``: because
        this worker lacks a label it requires; ``extra``: more fields of the event, e.g. the
        ``rate_limit`` of this worker's registration)."""
        self._counters.add(DEFERRED)
        self.status(task, DEFERRED, {"reason": reason, "body": dict(task), "delayed": delayed or None,
                                     "routed": routed or None, **(extra or {})})
    def forward(self, task: TaskData, topic: str) -> None:
        """Publish a task that has not started on another task topic (its routed topic)."""
        self._counters.add("forwarded")
        self._conn.publish(topic, codec.encode(task))

    def max_attempts(self, task: TaskData) -> int:
        tdef = self._registry.get(task.task)
        return task.max_attempts or (tdef.options.max_attempts if tdef else None) or DEFAULT_MAX_ATTEMPTS

    def status(self, task: TaskData, state: str, extra: dict[str, Any], qos: int = 1,
               ts: float | None = None) -> bytes | None:
        """Publish a status event on ``P/status/{id}``; returns its payload (the reply's too)."""
        ts = ts or time.time()
        try:
            payload = codec.encode(self._event(task, state, ts, extra))
        except ValueError as exc:  # a result that is not JSON: the attempt fails instead
            error = events.error_info("TypeError", f"result {exc}")
            payload = codec.encode(self._event(task, FAILED, ts, {**extra, "result": None, "error": error}))
        try:
            self._conn.publish(self._topics.status(task.id), payload, qos=qos, user_properties=self._trace(task))
        except PayloadTooLargeError as exc:
            return self._publish_too_large(task, exc)
        return payload

    def _event(self, task: TaskData, state: str, ts: float, extra: dict[str, Any]) -> dict[str, Any]:
        return events.status_event(task.id, state, task.attempt, ts, worker=self.worker_id, task=task.task,
                                   queue=task.queue, correlation=task.correlation, **extra)

    def _publish_too_large(self, task: TaskData, exc: PayloadTooLargeError) -> bytes:
        error = events.error_info("PayloadTooLargeError", str(exc))
        event = events.status_event(task.id, FAILED, task.attempt, time.time(), worker=self.worker_id,
                                    task=task.task, queue=task.queue, final=True, error=error)
        payload = codec.encode(event)
        self._conn.publish(self._topics.status(task.id), payload)
        return payload

    def reply(self, task: TaskData, message: Message, payload: bytes) -> None:
        """Send a final event to the task's reply topics, except where the reply guard refuses."""
        targets = {t for t in (task.reply_to, message.response_topic) if t}
        for topic in targets:
            refusal = events.reply_refusal(self._topics, topic)
            if refusal is not None:
                self.error(refusal, topic, None, task.id)
                continue
            correlation = message.correlation_data if topic == message.response_topic else None
            try:
                self._conn.publish(topic, payload, correlation_data=correlation, user_properties=self._trace(task))
            except (ValueError, PayloadTooLargeError) as exc:
                self.error(f"cannot reply on {topic!r}: {exc}", topic, None, task.id)

    def begin_attempt(self, task: TaskData, message: Message) -> Callable[[Callable[..., Any], bool],
                                                                            Callable[..., Any]]:
        """Start the attempt's span (tracing.py); returns what wraps its body to run inside it."""
        attempts = self.attempts
        if attempts is None:
            return lambda fn, is_async: fn
        attempts.begin(task, message.user_properties)
        return lambda fn, is_async: attempts.wrap(task, fn, is_async)

    def end_attempt(self, task: TaskData, state: str, error: dict[str, Any] | None = None) -> None:
        if self.attempts is not None:
            self.attempts.end(task, state, error)

    def _trace(self, task: TaskData) -> list[tuple[str, str]] | None:
        return self.attempts.properties(task) if self.attempts is not None else None

    def error(self, reason: str, topic: str | None, payload: bytes | None, task_id: str | None) -> None:
        """Publish an error report on ``P/errors``: what was rejected, where, and why."""
        report = events.error_report(component="worker", source=self.worker_id, reason=reason,
                                     ts=time.time(), topic=topic, payload=payload, task_id=task_id)
        self._conn.publish(self._topics.errors, codec.encode(report))


def _seconds(value: float | None) -> str:
    return "?" if value is None else f"{value:.3f}s"

