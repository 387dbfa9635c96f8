"""Effects: what the policy decided, as topics and payloads, held until the batch is committed.

Built on these facts:

- ``leases`` returns effects (``Cancel``, ``Announce``, ``Enqueue``) and never publishes; every
  outgoing message is built by ``protocol.events`` (one builder per wire message) and waits in the
  outbox until the loop has committed the batch that decided it and acknowledged its messages.
  What states no decision (answers to queries, the presence) goes into a second outbox
  (``send_now``) that the loop publishes after every batch, even one whose commit failed
  (``outage``): answers from memory stay available while the store is down.
- A final event also goes to the task's ``reply_to`` and its MQTT 5 Response Topic (with the
  Correlation Data echoed), but never onto the prefix's own topics: a ``dead`` event on
  ``P/tasks/q`` decodes as a runnable task. ``events.reply_refusal``, the guard every component
  shares, decides; a refused reply becomes an error report on ``P/errors`` (docs/security.md).
- The coordinator's own status events carry ``source: "coordinator"``, so that it ignores them
  when they come back on ``P/status/+``.
- A suspect that runs alone (a task lost with its worker ``alone_from_loss`` times:
  ``leases.runs_alone``) is dispatched with ``"alone": true`` (``leases``: poison isolation).
- A task's ``receipt_to`` gets one receipt per commit listing every id recorded for it (not a
  message per task); a receipt goes out after the commit like every effect, so a producer that has
  it can forget the task. The reply guard applies to receipt topics too.
- With signing on, a task the coordinator dispatches to an inbox is signed again: its ``attempt``
  and ``queue`` changed. A coordinator without the key must not change a signed field: where
  tracing records, the dispatch's own trace context would replace the task's signed
  ``traceparent``, and every worker with the key would refuse the task, each time it is sent
  (``test_tracing.py``). Such a task keeps the producer's context.
- The coordinator's clock is the fleet's (docs/coordinator.md, "Where time is judged"): a presence
  published live (not retained) is a reading of it for the workers (worker/fleet_clock.py), so its
  ``ts`` is read when the outbox is taken, after the commit, to leave as fresh as it can.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from .. import tracing
from ..leases import Announce, Cancel, Effect, Enqueue
from ..protocol import codec, events
from ..protocol.states import CANCELLED, DEAD, EXPIRED, ONLINE, RETRYING, SUCCEEDED
from . import routing

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..config import Settings
    from ..protocol.topics import Topics
    from ..store.base import TaskRecord
    from .backlog import Backlog

log = logging.getLogger(__name__)

SOURCE = "coordinator"
"""The ``source`` of the coordinator's own status events (it ignores them on ``P/status/+``)."""

RECEIPT_IDS = 1000
"""Ids per receipt message at most: 1,000 ids of 128 characters stay well below the payload cap."""

Outgoing = tuple[str, bytes, dict[str, Any]]

READING_GAP = 0.25
"""Seconds (monotonic) at least between two readings of the clock: after a coordinator restart
every worker's next heartbeat asks for one, and each reading goes to every worker, so N workers
cost about N x heartbeat_s / READING_GAP messages once, not N x N; a joining worker waits at most
this long for its reading."""


class Effects:
    """Carries out effects into an outbox of (topic, payload, publish options)."""

    def __init__(self, settings: Settings, topics: Topics, client_id: str, backlog: Backlog,
                 clock: Callable[[], float], stats: dict[str, int]) -> None:
        self._settings = settings
        self._topics = topics
        self._client_id = client_id
        self.identity: dict[str, Any] = {}  # with several coordinators: name and epoch, in the presence
        self._backlog = backlog
        self._clock = clock
        self._stats = stats
        self._outbox: list[Outgoing] = []
        self._time_wanted = False
        self._last_reading = -READING_GAP
        self._receipts: dict[str, list[str]] = {}
        self._now: list[Outgoing] = []

    def take(self) -> list[Outgoing]:
        """Everything sent since the last call, in order (a reading of the clock first, when one was
        asked for), then one receipt per receipt topic, then what ``send_now`` sent; the outboxes
        start empty again."""
        outbox, self._outbox = self._outbox, []
        if self._time_wanted and time.monotonic() - self._last_reading >= READING_GAP:
            self._time_wanted = False  # else it waits for a later batch (the loop runs every tick_s)
            self._last_reading = time.monotonic()
            outbox.insert(0, (self._topics.coordinator, self.presence(ONLINE), {}))
        if self._receipts:
            receipts, self._receipts = self._receipts, {}
            outbox.extend(self._receipt_messages(receipts))
        return outbox + self.take_now() if self._now else outbox

    def take_now(self) -> list[Outgoing]:
        """Only what ``send_now`` sent since the last call: publishable before a commit."""
        now, self._now = self._now, []
        return now

    def tell_the_time(self) -> None:
        """Send the workers a reading of the fleet's clock with this batch: ``online`` on
        ``P/coordinator``, not retained, ``ts`` read in ``take``. Once however often asked, at most
        one per ``READING_GAP``."""
        self._time_wanted = True

    def receipt(self, topic: str, task_id: str) -> None:
        """Confirm ``task_id`` on ``topic`` after the commit: one receipt per topic and batch."""
        ids = self._receipts.get(topic)
        if ids is None:
            self._receipts[topic] = [task_id]
        else:
            ids.append(task_id)

    def _receipt_messages(self, receipts: dict[str, list[str]]) -> list[Outgoing]:
        messages: list[Outgoing] = []
        now = self._clock()
        for topic, ids in receipts.items():
            refusal = events.reply_refusal(self._topics, topic)
            if refusal is not None:
                log.warning("coordinator: no receipt for %d task(s): %s", len(ids), refusal)
                continue
            for start in range(0, len(ids), RECEIPT_IDS):
                receipt = events.receipt(ids[start:start + RECEIPT_IDS], now, self._client_id)
                messages.append((topic, codec.encode(receipt), {}))
        return messages

    def send(self, topic: str, payload: bytes, **options: Any) -> None:
        """A message the batch's decisions produced: published once the batch is committed."""
        self._outbox.append((topic, payload, options))

    def send_now(self, topic: str, payload: bytes, **options: Any) -> None:
        """A message that states no decision (an answer, the presence): published after the batch,
        committed or not."""
        self._now.append((topic, payload, options))

    def apply(self, record: TaskRecord, effect: Effect) -> None:
        if isinstance(effect, Enqueue):
            self._backlog.push(effect.task_id, routing.lane_of(record), record.priority)
        elif isinstance(effect, Cancel):
            self._stats["cancels"] += 1
            log.info("coordinator: telling %s to stop task %s attempt %d: %s", effect.worker, effect.task_id,
                     effect.attempt, effect.reason)
            command = events.cancel_command(effect.task_id, effect.attempt, effect.reason,
                                            cancelled=effect.task_cancelled)
            self.send(self._topics.control(effect.worker), codec.encode(command))
        elif isinstance(effect, Announce):
            self._announce(record, effect)

    def _announce(self, record: TaskRecord, effect: Announce) -> None:
        self._count(record, effect)
        event = final_event(record) if effect.final else events.status_event(
            record.id, effect.state, record.attempt, self._clock(), task=record.task, queue=record.queue,
            correlation=record.correlation, reason=effect.reason, source=SOURCE, next_at=effect.next_at)
        payload = codec.encode(event)
        self.send(self._topics.status(record.id), payload)
        if effect.reply:
            self._reply(record, payload)
        if effect.dead_letter:
            letter = events.dead_letter(record.id, body=record.body, queue=record.queue, reason=effect.reason,
                                        failures=record.failures, attempts=record.history, error=record.error,
                                        ts=self._clock())
            self.send(self._topics.dead(record.queue), codec.encode(letter))

    def _count(self, record: TaskRecord, effect: Announce) -> None:
        if effect.state == DEAD:
            self._stats["dead"] += 1
            log.warning("coordinator: task %s is dead: %s", record.id, effect.reason)
        elif effect.state == EXPIRED:
            self._stats["expired"] += 1
        elif effect.state == CANCELLED:
            self._stats["cancelled"] += 1
        elif effect.state == RETRYING:
            self._stats["retried"] += 1
            log.info("coordinator: task %s will be retried: %s", record.id, effect.reason)
        else:
            log.info("coordinator: task %s %s: %s", record.id, effect.state, effect.reason)

    def _reply(self, record: TaskRecord, payload: bytes) -> None:
        if record.reply_to:
            self._reply_on(record, record.reply_to, payload)
        if record.response_topic and record.response_topic != record.reply_to:
            corr = bytes.fromhex(record.correlation_data) if record.correlation_data else None
            self._reply_on(record, record.response_topic, payload, correlation_data=corr)

    def _reply_on(self, record: TaskRecord, topic: str, payload: bytes, **options: Any) -> None:
        refusal = events.reply_refusal(self._topics, topic)
        if refusal is None:
            self.send(topic, payload, **options)
        else:
            log.warning("coordinator: task %s: %s", record.id, refusal)
            self.report(refusal, topic, None, record.id)

    def dispatch(self, record: TaskRecord, worker: str, *, alone: bool = False) -> None:
        """Send the record's task, as its next attempt, to ``worker``'s inbox; ``alone``: a suspect
        (``leases.runs_alone``), its worker runs nothing else meanwhile."""
        body = dict(record.body or {})
        body.update(attempt=record.attempt, queue=record.queue)
        if alone:
            body["alone"] = True
        key = getattr(self._settings, "signing_key", None)
        if key is not None or "sig" not in body:  # a signed task it cannot sign again keeps its signed context
            body.update(tracing.dispatch_context(body, worker))  # a span of its own where tracing records
        if key is not None:
            from .. import signing

            body = signing.sign(body, key)
        self.send(self._topics.inbox(worker), codec.encode(body), **trace_options(body))

    def report(self, reason: str, topic: str | None, payload: bytes | None, task_id: str | None) -> None:
        """An error report on ``P/errors``: what was rejected, where, and why."""
        report = events.error_report(component="coordinator", source=self._client_id, reason=reason,
                                     ts=self._clock(), topic=topic, payload=payload, task_id=task_id)
        self.send(self._topics.errors, codec.encode(report))

    def store_outage(self, reason: str, presence: str) -> None:
        """An outage of the store began or ended: an error report and the retained presence, at once."""
        report = events.error_report(component="coordinator", source=self._client_id, reason=reason,
                                     ts=self._clock())
        self.send_now(self._topics.errors, codec.encode(report))
        self.send_now(self._topics.coordinator, self.presence(presence), retain=True)

    def presence(self, state: str, resumed: bool | None = None) -> bytes:
        """The coordinator's presence (``online``, ``degraded``, ``offline``) on ``P/coordinator``."""
        return codec.encode(events.presence(state, self._clock(), self._client_id, os.getpid(), resumed,
                                            **self.identity))


def trace_options(body: dict[str, Any]) -> dict[str, Any]:
    """The task's trace context (tracing.py), kept in its body, as the dispatch's MQTT 5 User Properties."""
    carried = [(k, body[k]) for k in tracing.FIELDS if isinstance(body.get(k), str)]
    return {"user_properties": carried} if carried else {}


def final_event(record: TaskRecord) -> dict[str, Any]:
    """The final status event of a finished task, as a worker or the coordinator sent it."""
    winner = record.winner or {}
    outcome = {"result": record.result} if record.state == SUCCEEDED else {"error": record.error}
    return events.status_event(record.id, record.state, winner.get("attempt") or record.attempt, record.updated,
                               worker=winner.get("worker"), task=record.task, queue=record.queue,
                               correlation=record.correlation, final=True, reason=record.reason, source=SOURCE,
                               **outcome)
