"""Intake: a message on a task topic becomes a task to start or to put in line, or is settled
here with a verdict, without taking a slot. In order:

1. undecodable, oversize, not a task, bad signature: rejected (an error report, nothing runs);
2. the same id and attempt already running here: a duplicate (a QoS 1 redelivery), ignored;
3. ``expires_at`` (or the MQTT 5 Message Expiry) already past by the fleet's clock: ``expired``,
   final; an absolute ``expires_at`` while that clock is not read yet: handed to the coordinator
   (``deferred``), which judges it by its own clock (fleet_clock.py);
4. ``not_before`` still ahead by the fleet's clock (or that clock not read yet), on a task topic:
   handed to the coordinator (``deferred``), which holds it until then (``scheduled``); with no
   coordinator online, refused: an error report and a final ``failed`` (``NotBeforeError``), never
   run early. A task from this worker's inbox was judged due by the coordinator: it runs;
5. a ``rate_limit`` (the task's, else its registration's here), on a task topic: handed to the
   coordinator alike (``deferred``, ``delayed``), whose backlog dispatches it within the limit
   across the fleet; with no coordinator online, refused (``RateLimitError``), never run
   unlimited. From this worker's inbox: it runs;
6. ``requires`` a label this worker lacks (docs/routing.md): handed to the coordinator
   (``deferred``, ``routed``), which gives it to a worker that has them all; with no coordinator
   online, a task from ``P/tasks/{queue}`` is forwarded to its routed topic
   ``P/routed/{queue}/{labels}``, which only such workers share; one that arrived on a routed topic
   or the inbox is refused (an error report and a final ``failed``, ``LabelMismatchError``).
   A task on a routed topic without ``requires`` takes the topic's labels as its own;
7. no function registered under its name: ``failed`` with ``UnknownTaskError``.

Whatever is settled here is acknowledged by the dispatcher.

Facts it is built on:

- Payloads are JSON, never pickle, and capped by the library below the broker's limit
  (``settings.max_payload``; an oversize message must never reach paho's re-send loop,
  docs/broker-facts.md); the per-message decoder is pydantic-free (``codec.decode_task_data``).
- With a signing key, the signature covers the payload bytes as received (``signing``).
- QoS 1 is at-least-once: the broker re-sends what it has not seen acknowledged, e.g. after a
  reconnect, so the same attempt can arrive while it runs.
- An MQTT 5 Message Expiry Interval is the time left as the broker delivered it; it becomes
  ``expires_at``, so a task that expires while it waits in this worker, or in the coordinator's
  backlog after a deferral, still ends ``expired`` instead of vanishing.
- The worker turns a task name into code in one place: a lookup in the app's registry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Container
from typing import Any, Literal

from ..app import TaskDef, rate_fields
from ..config import Settings
from ..errors import DecodeError, UnknownTaskError
from ..execution import Outcome
from ..protocol import codec, events, labels
from ..protocol.states import EXPIRED, FAILED
from ..protocol.topics import Topics
from ..protocol.validate import TaskData
from ..signing import SignatureError, verify_payload
from ..transport import Message
from .fleet_clock import FleetClock
from .link import CoordinatorLink
from .reporter import Reporter
from .running import Running
from .stats import Counters

log = logging.getLogger(__name__)

Verdict = Literal["duplicate", "expired", "unsure", "unknown", "not_yet", "rate_limited", "unmatched"]
DUPLICATE: Verdict = "duplicate"
EXPIRED_VERDICT: Verdict = "expired"
UNSURE: Verdict = "unsure"
UNKNOWN: Verdict = "unknown"
NOT_YET: Verdict = "not_yet"
RATE_LIMITED: Verdict = "rate_limited"
UNMATCHED: Verdict = "unmatched"


def read_task(message: Message, topics: Topics, *, max_payload: int, signing_key: str | bytes | None) -> TaskData:
    """The task a message carries; raises ``DecodeError`` or ``SignatureError`` when there is none."""
    task = codec.decode_task_data(message.payload, topic=message.topic, queue=topics.queue_of(message.topic),
                                  max_payload=max_payload)
    if signing_key is not None:
        verify_payload(message.payload, signing_key)
    return task


def apply_message_expiry(task: TaskData, message: Message, clock: Callable[[], float] = time.time) -> None:
    """An MQTT 5 Message Expiry Interval becomes ``expires_at``, where it is the earlier deadline."""
    if message.expiry is None:
        return
    deadline = clock() + message.expiry
    if task.expires_at is None or deadline < task.expires_at:
        task["expires_at"] = deadline


def judge(task: TaskData, running_attempt: int | None, registry: Container[str],
          clock: Callable[[], float | None] = time.time, *, due: bool = False,
          own_labels: Container[str] = ()) -> Verdict | None:
    """Why ``task`` ends here without taking a slot, or None when it may start. Pure; ``clock``
    (the fleet's time, None when this worker cannot tell it yet) is read only for a task that
    has an expiry or a ``not_before``; ``due``: the coordinator dispatched it (from this worker's inbox):
    it judged its ``not_before`` and its ``rate_limit`` already; ``own_labels``: this worker's, which
    must include every label the task ``requires``."""
    if running_attempt == task.attempt:
        return DUPLICATE
    if task.expires_at is not None:
        now = clock()
        if now is None:
            return UNSURE
        if task.expires_at < now:
            return EXPIRED_VERDICT
    if task.not_before is not None and not due:
        now = clock()
        if now is None or task.not_before > now:
            return NOT_YET
    if task.rate_limit is not None and not due:
        return RATE_LIMITED
    if any(label not in own_labels for label in task.requires or ()):
        return UNMATCHED
    if task.task not in registry:
        return UNKNOWN
    return None


class Intake:
    """Applies the verdicts: reads each task message, settles what may not start."""

    def __init__(self, worker_id: str, topics: Topics, settings: Settings, registry: dict[str, TaskDef[Any]],
                 running: Running, reporter: Reporter, counters: Counters, clock: FleetClock,
                 link: CoordinatorLink | None = None, own_labels: tuple[str, ...] = ()) -> None:
        self.worker_id = worker_id
        self.labels = frozenset(own_labels)
        self._clock = clock
        self._link = link
        self._topics = topics
        self._max_payload = settings.max_payload
        self._signing_key = settings.signing_key
        self._registry = registry
        self._running = running
        self._reporter = reporter
        self._counters = counters

    def admit(self, message: Message) -> TaskData | None:
        """The task to start (or put in line), or None when it was settled here (ack it)."""
        try:
            task = read_task(message, self._topics, max_payload=self._max_payload, signing_key=self._signing_key)
        except (DecodeError, SignatureError) as exc:
            self._reject(message, exc.reason if isinstance(exc, DecodeError) else str(exc))
            return None
        self._label_from_topic(task, message.topic)
        clock = self._clock
        # judged by the fleet's clock; a relative expiry by any
        absolute = task.expires_at is not None or task.not_before is not None
        apply_message_expiry(task, message, clock.now)
        due = message.topic.startswith(self._topics.inbox_root)
        verdict = judge(task, self._running.attempt_of(task.id), self._registry,
                        clock.now_or_none if absolute else clock.now, due=due, own_labels=self.labels)
        registered = self._registered_limit(task) if verdict is None and not due else None
        if registered is not None:
            verdict = RATE_LIMITED
        elif verdict is None:
            return task
        self._settle(verdict, task, message, registered)
        return None

    def _registered_limit(self, task: TaskData) -> dict[str, Any] | None:
        """For a task without a ``rate_limit`` whose registration here has one (sent by another
        client, or by name from a producer that did not register it): the registration's
        ``rate_limit`` and the ``rate_key`` read from the task's arguments. It is handed to the
        coordinator with them, never run unlimited; the task itself is left as it was (a signed
        task must stay as signed)."""
        tdef = self._registry.get(task.task)
        if task.rate_limit is not None or tdef is None or tdef.options.rate_limit is None:
            return None
        try:
            return rate_fields(tdef.name, tdef.options, tdef.fn, tuple(task.args), task.kwargs)
        except Exception as exc:  # a key that cannot be read from these arguments: the name's own window
            log.warning("worker %s: task %s: no rate key (%s); limited by its name alone", self.worker_id,
                        task.id, exc)
            return {"rate_limit": tdef.options.rate_limit}

    def _label_from_topic(self, task: TaskData, topic: str) -> None:
        """A task on ``P/routed/{queue}/{labels}`` without ``requires`` requires the topic's labels
        (so a hand-over to the coordinator keeps them). Not a signed one: its signature covers its
        fields (signing.py), so a signed task must carry its ``requires`` itself."""
        if not task.requires and "sig" not in task and topic.startswith(self._topics.routed_root):
            level = topic.rsplit("/", 1)[-1]
            task["requires"] = [label for label in level.split(",") if labels.is_label(label)]

    def _reject(self, message: Message, reason: str) -> None:
        self._counters.add("rejected")
        log.warning("worker %s rejected a message on %s: %s", self.worker_id, message.topic, reason)
        self._reporter.error(reason, message.topic, message.payload, codec.guess_id(message.payload))

    def _settle(self, verdict: Verdict, task: TaskData, message: Message,
                registered: dict[str, Any] | None = None) -> None:
        if verdict == DUPLICATE:
            log.info("worker %s: task %s attempt %d delivered again; already running", self.worker_id,
                     task.id, task.attempt)
        elif verdict == EXPIRED_VERDICT:
            self._reporter.finish(task, message, EXPIRED, {"reason": "expired before it was started"}, final=True)
        elif verdict == UNSURE:
            self._reporter.defer(task, "its expiry is the coordinator's to judge until this worker has read its clock")
        elif verdict == NOT_YET:
            self._not_yet(task, message)
        elif verdict == RATE_LIMITED:
            limit = task.rate_limit or (registered or {}).get("rate_limit")
            self._hand_over(task, message, f"rate_limit {limit} is the coordinator's to keep", "RateLimitError",
                            f"has rate_limit {limit}", registered=registered)
        elif verdict == UNMATCHED:
            self._unmatched(task, message)
        else:
            err = UnknownTaskError(task.task)
            self._reporter.outcome(task, message, Outcome(False, None, type(err).__name__, str(err)))

    def _not_yet(self, task: TaskData, message: Message) -> None:
        """A task that may not start yet: the coordinator holds it; with none online, refused."""
        now = self._clock.now()
        ahead = f"{task.not_before - now:.0f} s ahead" if task.not_before > now else "not judged yet"
        self._hand_over(task, message, f"not_before {task.not_before} is {ahead}: the coordinator holds it",
                        "NotBeforeError", f"not_before {task.not_before} is {ahead}", "run early")

    def _hand_over(self, task: TaskData, message: Message, why: str, error_type: str, what: str,
                   instead: str = "run unlimited", registered: dict[str, Any] | None = None) -> None:
        """Hand a task only the coordinator may dispatch to it (``deferred``, ``delayed``, with the
        ``registered`` rate fields); with no coordinator online, refuse it: an error report and a
        final ``failed`` of ``error_type``."""
        if self._link is None or self._link.online:
            self._reporter.defer(task, why, delayed=True, extra=registered)
            return
        reason = f"task {task.id}: {what} and no coordinator is online to hold it; refused rather than {instead}"
        log.warning("worker %s: %s", self.worker_id, reason)
        self._reporter.error(reason, message.topic, None, task.id)
        error = events.error_info(error_type, reason)
        self._reporter.finish(task, message, FAILED, {"error": error}, final=True)

    def _unmatched(self, task: TaskData, message: Message) -> None:
        """A task that requires a label this worker lacks: to the coordinator; with none online,
        forwarded once to its routed topic, or refused when it came from one (or the inbox)."""
        lacking = labels.describe(labels.missing(task.requires, self.labels))
        if self._link is None or self._link.online:
            self._reporter.defer(task, f"worker {self.worker_id} lacks label(s) {lacking}", routed=True)
            return
        if message.topic.startswith(self._topics.tasks_root):
            topic = self._topics.routed(task.queue or "default", labels.routed_level(task.requires))
            log.info("worker %s: task %s requires %s, which it lacks; no coordinator online: forwarded to %s",
                     self.worker_id, task.id, lacking, topic)
            self._reporter.forward(task, topic)
            return
        reason = (f"task {task.id}: requires {labels.describe(task.requires)}; worker {self.worker_id} lacks "
                  f"{lacking} and no coordinator is online to route it")
        log.warning("worker %s: %s", self.worker_id, reason)
        self._reporter.error(reason, message.topic, None, task.id)
        self._reporter.finish(task, message, FAILED, {"error": events.error_info("LabelMismatchError", reason)},
                              final=True)
