"""Handlers: what each incoming message does to the record, the fleet and the backlog.

Built on these facts (docs/design.md "Wire contract"):

- The coordinator reads ``P/tasks/+`` (a task seen: recorded, its dispatch timer starts),
  ``P/record/+`` (a producer's re-send of a task it has no receipt for: ``leases.on_resent``),
  ``P/status/+`` (the workers' events), ``P/workers/+`` (heartbeats and Last Wills) and the query
  topic (``queries``), and ``P/cancel/+`` and ``P/workflows`` (``cancels``, ``workflows``). Each
  payload is decoded by ``protocol.codec`` into a validated model; a payload that does not decode
  is reported on ``P/errors`` and the next message is processed.
- A status event is handled by the handler its state names in ``status_handlers``, an explicit
  table keyed by the state constants of ``protocol.states``; a state without a handler
  (``progress``, ``retrying``, ...) changes nothing here. Handlers read the declared fields of
  ``StatusEvent``: ``max_attempts`` on ``failed`` is the limit the worker applied (the task's own,
  else its registration's), which the record adopts when the task did not say.
- Events the coordinator published itself (``source: "coordinator"``) and events no worker sent
  come back on ``P/status/+`` and are ignored. An event must be on its own task's topic.
- A task with a ``receipt_to`` gets a receipt there once the batch that recorded it is committed,
  whether it was new, a redelivery or a re-send (``Effects.receipt``).
- A heartbeat lists the attempts its worker holds: that renews their leases in one message
  (``leases.on_started``); a Last Will (``offline``) re-dispatches what the worker held. A
  ``deferred`` marked ``abandoned`` is a started attempt a stopping worker handed back when its
  grace ran out: dispatched again as attempt + 1, no failure counted (``leases.on_handed_back``).
- A live heartbeat (``online``, not retained) also tells the rollouts (``deploys.py``): a worker a
  continuous rollout's selector matches that it does not have yet joins it.
- A live heartbeat from a worker that was not live (it just started or came back) is answered
  with a reading of the fleet's clock (``Effects.tell_the_time``): the worker judges absolute
  expiries by it, and hands them to the coordinator until it has one (worker/fleet_clock.py).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .. import leases
from ..errors import DecodeError, StoreError
from ..protocol import codec, rpc
from ..protocol.states import (
    CANCELLED,
    DEFERRED,
    EXPIRED,
    FAILED,
    OFFLINE,
    ONLINE,
    PROGRESS,
    STARTED,
    SUCCEEDED,
)
from . import routing
from .effects import SOURCE

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..config import Settings
    from ..leases import LeasePolicy, Rng
    from ..protocol.messages import StatusEvent
    from ..protocol.topics import Topics
    from ..transport import Message
    from .cancels import CancelRequests
    from .deploys import Rollouts
    from .effects import Effects
    from .fleet import Fleet
    from .queries import Queries
    from .records import Records
    from .workflows import Workflows

log = logging.getLogger(__name__)


class Handlers:
    """Routes each message by topic to its handler, and reports what cannot be decoded."""

    def __init__(self, settings: Settings, topics: Topics, records: Records, fleet: Fleet, effects: Effects,
                 queries: Queries, policy: LeasePolicy, clock: Callable[[], float], rng: Rng,
                 stats: dict[str, int], cancels: CancelRequests | None = None,
                 workflows: Workflows | None = None) -> None:
        self._max_payload = settings.max_payload
        self._topics = topics
        self._records = records
        self._fleet = fleet
        self._effects = effects
        self._queries = queries
        self._policy = policy
        self._clock = clock
        self._rng = rng
        self._stats = stats
        self._cancels = cancels
        self._workflows = workflows
        self.on_presence: Callable[[Message], None] | None = None  # several coordinators: standby.py
        self.deploys: Rollouts | None = None  # code rollouts: deploys.py
        self.status_handlers: dict[str, Callable[[StatusEvent], None]] = {
            STARTED: self.on_started,
            SUCCEEDED: self.on_succeeded,
            FAILED: self.on_failed,
            DEFERRED: self.on_deferred,
            EXPIRED: self.on_expired,
            PROGRESS: self.on_progress,
            CANCELLED: self.on_cancelled,
        }

    def on_message(self, message: Message) -> None:
        topic = message.topic
        topics = self._topics
        try:
            if topic.startswith(topics.tasks_root):
                self.on_task(message)
            elif topic.startswith(topics.record_root):
                self.on_resent(message)
            elif topic.startswith(topics.status_root):
                self.on_status(message)
            elif topic.startswith(topics.workers_root):
                self.on_worker_state(message)
            elif rpc.is_rpc_topic(topics, topic):
                self._queries.on_rpc(message)
            else:
                self.on_extension(message)
        except DecodeError as exc:
            self._stats["rejected"] += 1
            log.warning("coordinator rejected a message on %s: %s", topic, exc.reason)
            self._effects.report(exc.reason, topic, message.payload, exc.task_id)
        except StoreError:
            raise  # the store could not be read: the loop keeps the message for later (outage.py)
        except Exception as exc:
            log.exception("coordinator: error handling a message on %s", topic)
            self._effects.report(f"internal error: {type(exc).__name__}: {exc}", topic, message.payload, None)

    def on_extension(self, message: Message) -> None:
        """A cancel request, a workflow, another coordinator's presence (several coordinators), or a
        worker's answer to a code bundle."""
        topic = message.topic
        if self._cancels is not None and topic.startswith(self._topics.cancel_root):
            self._cancels.on_request(message)
        elif self._workflows is not None and topic == self._topics.workflows:
            self._workflows.on_message(message)
        elif topic == self._topics.coordinator and self.on_presence is not None:
            self.on_presence(message)
        elif self.deploys is not None and topic.startswith(self._topics.deploy_status_root):
            self.deploys.on_report(message)

    def on_task(self, message: Message) -> None:
        task = codec.decode_task(message.payload, topic=message.topic, queue=self._topics.queue_of(message.topic),
                                 max_payload=self._max_payload)
        body = task.model_dump(exclude_none=True)
        record = self._records.get_or_create(task.id)
        if message.response_topic and record.response_topic is None:
            record.response_topic = message.response_topic
            if message.correlation_data is not None:
                record.correlation_data = message.correlation_data.hex()
        self._records.save(record, leases.on_task(record, body, self._clock(), self._policy))
        if task.receipt_to:
            self._effects.receipt(task.receipt_to, task.id)

    def on_resent(self, message: Message) -> None:
        """A task re-sent to the coordinator alone (``P/record/{queue}``) by a producer that had no receipt."""
        task = codec.decode_task(message.payload, topic=message.topic, queue=self._topics.queue_of(message.topic),
                                 max_payload=self._max_payload)
        seen = self._records.get(task.id) is not None
        record = self._records.get_or_create(task.id)
        self._records.save(record, leases.on_resent(record, task.model_dump(exclude_none=True), seen, self._clock()))
        if task.receipt_to:
            self._effects.receipt(task.receipt_to, task.id)

    # -- status events ---------------------------------------------------------------------
    def on_status(self, message: Message) -> None:
        event = codec.decode_status(message.payload, topic=message.topic, max_payload=self._max_payload)
        if not event.worker or (event.model_extra or {}).get("source") == SOURCE:
            return
        if self._topics.task_id_of_status(message.topic) != event.id:
            raise DecodeError(f"status event for {event.id} on the topic of another task",
                              payload=message.payload, topic=message.topic, task_id=event.id)
        handler = self.status_handlers.get(event.state)
        if handler is not None:
            handler(event)

    def on_started(self, event: StatusEvent) -> None:
        assert event.worker is not None  # on_status passes only events a worker sent
        record = self._records.get_or_create(event.id, task=event.task, queue=event.queue)
        view = self._fleet.started(event.worker, record)
        effects = leases.on_started(record, event.attempt, event.worker, view.heartbeat_s or None, self._clock(),
                                    self._policy)
        self._records.save(record, effects)

    def on_succeeded(self, event: StatusEvent) -> None:
        record = self._records.get_or_create(event.id, task=event.task, queue=event.queue)
        self._fleet.finished(event.worker, record, self._clock())
        was_terminal = record.terminal
        effects = leases.on_succeeded(record, event.attempt, event.worker, event.result, self._clock())
        if record.state == SUCCEEDED and not was_terminal:
            self._stats["succeeded"] += 1
        elif was_terminal:
            self._stats["duplicates"] += 1
        self._records.save(record, effects)

    def on_failed(self, event: StatusEvent) -> None:
        record = self._records.get_or_create(event.id, task=event.task, queue=event.queue)
        self._fleet.finished(event.worker, record, self._clock())
        error = event.error.model_dump(exclude_none=True) if event.error else None
        allowed = event.max_attempts if event.max_attempts and event.max_attempts > 0 else None
        effects = leases.on_failed(record, event.attempt, event.worker, error, bool(event.final), allowed,
                                   self._clock(), self._policy, self._rng)
        self._records.save(record, effects)

    def on_deferred(self, event: StatusEvent) -> None:
        assert event.worker is not None
        record = self._records.get_or_new(event.id, event.body, task=event.task, queue=event.queue)
        self._fleet.deferred(event.worker, record, full=not (event.delayed or event.routed))  # neither is full
        if event.routed:  # the worker lacks a label the task requires (routing.py)
            self._records.save(record, routing.on_unmatched(record, event.attempt, event.worker, event.body,
                                                            self._clock()))
            return
        if event.delayed:
            rate = (event.rate_limit, event.rate_key) if event.rate_limit else None  # the worker's registration
            self._records.save(record, leases.on_delayed_handover(record, event.attempt, event.worker, event.body,
                                                                  self._clock(), rate))
            return
        if event.abandoned:  # a stopping worker's started attempt, past its grace
            log.info("coordinator: worker %s handed back task %s attempt %d (%s); dispatching it again",
                     event.worker, event.id, event.attempt, event.reason or "stopped")
            self._records.save(record, leases.on_handed_back(record, event.attempt, event.worker, event.body,
                                                             event.reason, self._clock()))
            return
        self._records.save(record, leases.on_deferred(record, event.attempt, event.worker, event.body,
                                                      self._clock()))

    def on_expired(self, event: StatusEvent) -> None:
        record = self._records.get_or_create(event.id, task=event.task, queue=event.queue)
        effects = leases.on_worker_event_final(record, EXPIRED, event.attempt, event.worker, event.reason,
                                               self._clock())
        self._records.save(record, effects)

    def on_progress(self, event: StatusEvent) -> None:
        assert event.worker is not None
        record = self._records.get_or_create(event.id, task=event.task, queue=event.queue)
        view = self._fleet.views.get(event.worker)
        self._records.save(record, leases.on_progress(record, event.attempt, event.worker,
                                                      view.heartbeat_s if view else None, event.progress,
                                                      self._clock(), self._policy))

    def on_cancelled(self, event: StatusEvent) -> None:
        """A worker cancelled an attempt it held or was sent (a cancel request reached it): final
        when it saw no coordinator (it replied itself), else the coordinator ends the task here."""
        record = self._records.get_or_create(event.id, task=event.task, queue=event.queue)
        reason = event.reason or "cancelled"
        if event.final:
            effects = leases.on_worker_event_final(record, CANCELLED, event.attempt, event.worker, reason,
                                                   self._clock())
        else:
            effects = leases.on_cancel(record, reason, self._clock(), attempt=event.attempt)
        self._records.save(record, effects)

    # -- worker states ---------------------------------------------------------------------
    def on_worker_state(self, message: Message) -> None:
        if not message.payload:
            return  # a cleared retained state
        state = codec.decode_worker_state(message.payload, topic=message.topic, max_payload=self._max_payload)
        worker = self._topics.worker_of(message.topic) or state.worker
        now = self._clock()
        known = self._fleet.views.get(worker)
        if state.state == ONLINE and not message.retain and (known is None or not leases.is_live(
                known, now, self._policy)):
            self._effects.tell_the_time()  # a worker joined: it needs a reading of the fleet's clock
        view = self._fleet.heard(worker, state, now, message.retain)
        if state.state == OFFLINE:
            self._worker_lost(worker, now)
            return
        if self.deploys is not None and state.state == ONLINE and not message.retain:
            self.deploys.on_heard(worker, view.labels, state.code or {}, now)  # a late joiner of a rollout?
        held = {t.id: t.attempt for t in state.tasks}
        for task_id, attempt in held.items():
            record = self._records.get_or_create(task_id)
            self._records.save(record, leases.on_started(record, attempt, worker, state.heartbeat_s, now,
                                                         self._policy))
        self._fleet.reconcile(worker, state, held, self._records.live)

    def _worker_lost(self, worker: str, now: float) -> None:
        self._fleet.lost(worker, now)
        lost = self._records.held_by(worker)
        if lost:
            log.warning("coordinator: worker %s went offline holding %d task(s); dispatching them again",
                        worker, len(lost))
        for record in lost:
            self._records.save(record, leases.on_worker_lost(record, worker, now, self._policy))
        queues = self._fleet.views[worker].queues
        for record in self._records.queued_in(queues):  # taken unannounced? looked at within a heartbeat
            if leases.may_have_taken(record, queues, now):
                self._records.check_soon(record)
