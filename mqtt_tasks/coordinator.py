"""The coordinator: a thin loop around the pure lease / retry / dispatch policy of ``leases``.

Threads: the paho network thread only enqueues; ``mqtt-coordinator`` owns every piece of state
and does, in a loop::

    take a batch of messages -> decide each (leases.*) -> store.commit() -> ack the batch
    -> publish the effects (status, replies, dead letters, inbox dispatches, cancels)
    -> when idle: timers (leases, dispatch timeouts, retries, expiry) and backlog dispatch

A message is acknowledged only after the commit that records it, and the MQTT session is
persistent, so a ``kill -9`` loses nothing that was acknowledged: the broker redelivers the rest.
See docs/coordinator.md.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import queue
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from . import leases
from .config import Settings
from .errors import (  # noqa: F401 - the query errors are re-exported from here too
    CoordinatorTimeoutError,
    DecodeError,
    MqttTasksError,
    PayloadTooLargeError,
    TaskNotFoundError,
    TransportError,
)
from .leases import Announce, Cancel, Effect, Enqueue, LeasePolicy, WorkerView
from .protocol import codec, events
from .protocol.topics import Topics
from .store.base import BACKLOG, DEAD, DISPATCHED, EXPIRED, QUEUED, STARTED, SUCCEEDED, Store, TaskRecord
from .store.memory import MemoryStore
from .store.sqlite import SQLiteStore
from .transport import Connection, Message, Will

log = logging.getLogger(__name__)

SOURCE = "coordinator"
FORCED_TICK_S = 2.0


class Coordinator:
    """The durable record of every task. ``with Coordinator(settings, "tasks.db"): ...``"""

    def __init__(
        self,
        settings: Settings,
        store: Store | str | None = None,
        *,
        policy: LeasePolicy | None = None,
        client_id: str | None = None,
        session_expiry: int = 3600,
        batch_size: int = 1000,
        tick_s: float = 0.1,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.topics = Topics(settings.prefix)
        self._owns_store = not isinstance(store, Store)
        self.store: Store = store if isinstance(store, Store) else (SQLiteStore(store) if store else MemoryStore())
        self.policy = policy or LeasePolicy()
        self.client_id = client_id or "mqtt-tasks-coordinator-" + settings.prefix.replace("/", "_")
        self.batch_size = batch_size
        self.tick_s = tick_s
        self._clock = clock
        self._rng = rng
        self._events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._live: dict[str, TaskRecord] = {}
        self._backlog: dict[str, deque[tuple[int, str]]] = {}  # queue -> FIFO of (arrival, task id)
        self._in_backlog: set[str] = set()
        self._arrivals = itertools.count()
        self._timers: list[tuple[float, str]] = []  # heap of (when a live record's timer is due, id)
        self._due: dict[str, float] = {}  # id -> its earliest entry in _timers
        self._workers: dict[str, WorkerView] = {}
        self._inflight: dict[str, set[str]] = {}
        self._outbox: list[tuple[str, bytes, dict[str, Any]]] = []
        self._online = False
        self._last_tick = 0.0
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self.stats = {"recorded": 0, "dispatched": 0, "redispatched": 0, "retried": 0, "dead": 0,
                      "expired": 0, "succeeded": 0, "duplicates": 0, "cancels": 0, "rejected": 0}
        self._conn = Connection(
            settings, self.client_id, on_message=self._enqueue, manual_ack=True,
            session_expiry=session_expiry, receive_maximum=65535,
            will=Will(self.topics.coordinator, codec.encode({"state": "offline", "client": self.client_id})),
            on_connect=lambda first: self._events.put(("connected", first)),
            on_disconnect=lambda rc: self._events.put(("disconnected", rc)),
        )

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> Coordinator:
        """Load the live record, connect, subscribe, announce; returns when running."""
        now = self._clock()
        for record in self.store.load_live():
            self._live[record.id] = record
            leases.extend(record, now, self.policy.reconnect_grace)
            self._schedule(record)
            if record.state == BACKLOG:
                self._push_backlog(record.id, record.queue)
        log.info("coordinator %s: %d live task(s) recovered from the store", self.client_id, len(self._live))
        for topic in (self.topics.all_tasks, self.topics.all_status, self.topics.all_workers, self.topics.rpc):
            self._conn.subscribe(topic)
        self._thread = threading.Thread(target=self._loop, name="mqtt-coordinator", daemon=True)
        self._thread.start()
        self._conn.connect()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Commit, announce ``offline`` (retained), disconnect."""
        if self._stopped.is_set():
            return
        self._events.put(("stop", None))
        if self._thread is not None:
            self._thread.join(timeout)
        self._stopped.set()
        try:
            self._conn.publish(self.topics.coordinator, self._presence("offline"), retain=True)
        except MqttTasksError as exc:
            log.warning("coordinator: could not announce offline: %s", exc)
        self._conn.close()
        if self._owns_store:
            self.store.close()
        else:
            self.store.commit()
        log.info("coordinator %s stopped", self.client_id)

    def __enter__(self) -> Coordinator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def live_count(self) -> int:
        return len(self._live)

    # -- network thread ----------------------------------------------------------------
    def _enqueue(self, message: Message) -> None:
        self._events.put(("msg", message))

    # -- the loop ----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                self._flush([])
                return
            try:
                self._process(batch)
            except Exception:
                log.exception("coordinator: unexpected error in the loop")

    def _take_batch(self) -> list[tuple[str, Any]] | None:
        batch: list[tuple[str, Any]] = []
        try:
            batch.append(self._events.get(timeout=self.tick_s))
        except queue.Empty:
            return batch
        while len(batch) < self.batch_size:
            try:
                batch.append(self._events.get_nowait())
            except queue.Empty:
                break
        if any(kind == "stop" for kind, _ in batch):
            self._process([item for item in batch if item[0] != "stop"])
            return None
        return batch

    def _process(self, batch: list[tuple[str, Any]]) -> None:
        acks: list[Message] = []
        self._prefetch(batch)
        for kind, value in batch:
            if kind == "msg":
                self._on_message(value)
                acks.append(value)
            elif kind == "connected":
                self._on_connected()
            elif kind == "disconnected":
                self._online = False
        now = self._clock()
        idle = self._events.empty()
        if self._online and (idle or now - self._last_tick > FORCED_TICK_S) and now - self._last_tick >= self.tick_s:
            self._last_tick = now
            self._tick(now)
        if self._online:
            self._dispatch_backlog(now)
        self._flush(acks)

    def _prefetch(self, batch: list[tuple[str, Any]]) -> None:
        """Read the records of the batch's tasks that are not live in one query, not one per message."""
        ids = []
        for kind, message in batch:
            if kind != "msg":
                continue
            if message.topic.startswith(self.topics.status_root):
                task_id = self.topics.task_id_of_status(message.topic)
            elif message.topic.startswith(self.topics.tasks_root):
                task_id = codec.guess_id(message.payload)
            else:
                continue
            if task_id and task_id not in self._live:
                ids.append(task_id)
        if ids:
            self.store.prefetch(ids)

    def _flush(self, acks: list[Message]) -> None:
        self.store.commit()
        self._conn.ack_many(acks)
        outbox, self._outbox = self._outbox, []
        for topic, payload, kwargs in outbox:
            try:
                self._conn.publish(topic, payload, **kwargs)
            except (MqttTasksError, ValueError) as exc:
                log.error("coordinator: cannot publish to %s: %s", topic, exc)

    def _on_connected(self) -> None:
        self._online = True
        now = self._clock()
        for record in self._live.values():
            leases.extend(record, now, self.policy.reconnect_grace)
        self._send(self.topics.coordinator, self._presence("online"), retain=True)
        log.info("coordinator %s online at %s (%d live tasks)", self.client_id, self.settings.display_url,
                 len(self._live))

    def _on_message(self, message: Message) -> None:
        topic = message.topic
        try:
            if topic.startswith(self.topics.tasks_root):
                self._on_task(message)
            elif topic.startswith(self.topics.status_root):
                self._on_status(message)
            elif topic.startswith(self.topics.workers_root):
                self._on_worker(message)
            elif topic == self.topics.rpc:
                self._on_rpc(message)
        except DecodeError as exc:
            self.stats["rejected"] += 1
            log.warning("coordinator rejected a message on %s: %s", topic, exc.reason)
            self._report(exc.reason, topic, message.payload, exc.task_id)
        except Exception as exc:
            log.exception("coordinator: error handling a message on %s", topic)
            self._report(f"internal error: {type(exc).__name__}: {exc}", topic, message.payload, None)

    # -- records -----------------------------------------------------------------------
    def _get(self, task_id: str) -> TaskRecord | None:
        record = self._live.get(task_id)
        return record if record is not None else self.store.get(task_id)

    def _get_or_create(self, task_id: str, **known: Any) -> TaskRecord:
        record = self._get(task_id)
        if record is None:
            record = leases.new_record(task_id, self._clock(), **known)
            self._live[task_id] = record
            self.stats["recorded"] += 1
        return record

    def _save(self, record: TaskRecord, effects: list[Effect]) -> None:
        self.store.put(record)
        if record.terminal:
            self._live.pop(record.id, None)
            self._in_backlog.discard(record.id)
            self._due.pop(record.id, None)
        else:
            if record.id not in self._live:
                self._live[record.id] = record
            self._schedule(record)
        for effect in effects:
            self._apply(record, effect)

    # -- inputs ------------------------------------------------------------------------
    def _on_task(self, message: Message) -> None:
        task = codec.decode_task(message.payload, topic=message.topic, queue=self.topics.queue_of(message.topic),
                                 max_payload=self.settings.max_payload)
        body = task.model_dump(exclude_none=True)
        record = self._get_or_create(task.id)
        if message.response_topic and record.response_topic is None:
            record.response_topic = message.response_topic
            if message.correlation_data is not None:
                record.correlation_data = message.correlation_data.hex()
        self._save(record, leases.on_task(record, body, self._clock(), self.policy))

    def _on_status(self, message: Message) -> None:
        event = codec.decode_status(message.payload, topic=message.topic, max_payload=self.settings.max_payload)
        extra = event.model_extra or {}
        if extra.get("source") == SOURCE or not event.worker:
            return
        if self.topics.task_id_of_status(message.topic) != event.id:
            raise DecodeError(f"status event for {event.id} on the topic of another task",
                              payload=message.payload, topic=message.topic, task_id=event.id)
        handler = getattr(self, f"_status_{event.state}", None)
        if handler is not None:
            handler(event, extra)

    def _status_started(self, event: Any, extra: dict[str, Any]) -> None:
        record = self._get_or_create(event.id, task=event.task, queue=event.queue)
        view = self._worker(event.worker)
        if record.state == DISPATCHED and record.worker == event.worker:
            self._inflight.get(event.worker, set()).discard(event.id)
        else:
            view.free = max(0, view.free - 1)
        hb = view.heartbeat_s or None
        self._save(record, leases.on_started(record, event.attempt, event.worker, hb, self._clock(), self.policy))

    def _status_succeeded(self, event: Any, extra: dict[str, Any]) -> None:
        record = self._get_or_create(event.id, task=event.task, queue=event.queue)
        self._slot_freed(event.worker, record)
        was_terminal = record.terminal
        effects = leases.on_succeeded(record, event.attempt, event.worker, event.result, self._clock())
        if record.state == SUCCEEDED and not was_terminal:
            self.stats["succeeded"] += 1
        elif was_terminal:
            self.stats["duplicates"] = self.stats["duplicates"] + 1
        self._save(record, effects)

    def _status_failed(self, event: Any, extra: dict[str, Any]) -> None:
        record = self._get_or_create(event.id, task=event.task, queue=event.queue)
        self._slot_freed(event.worker, record)
        error = event.error.model_dump(exclude_none=True) if event.error else None
        allowed = extra.get("max_attempts") if isinstance(extra.get("max_attempts"), int) else None
        effects = leases.on_failed(record, event.attempt, event.worker, error, bool(event.final), allowed,
                                   self._clock(), self.policy, self._rng)
        self._save(record, effects)

    def _status_deferred(self, event: Any, extra: dict[str, Any]) -> None:
        record = self._get(event.id)
        if record is None:
            record = leases.new_record(event.id, self._clock(), body=event.body, task=event.task, queue=event.queue)
            self.stats["recorded"] += 1
        view = self._worker(event.worker)
        view.free = 0
        if record.state == DISPATCHED and record.worker == event.worker:
            self._inflight.get(event.worker, set()).discard(event.id)
        self._save(record, leases.on_deferred(record, event.attempt, event.worker, event.body, self._clock()))

    def _status_expired(self, event: Any, extra: dict[str, Any]) -> None:
        record = self._get_or_create(event.id, task=event.task, queue=event.queue)
        effects = leases.on_worker_event_final(record, EXPIRED, event.attempt, event.worker, event.reason,
                                               self._clock())
        self._save(record, effects)

    def _slot_freed(self, worker: str | None, record: TaskRecord | None = None) -> None:
        if worker is None:
            return
        view = self._worker(worker)
        if record is not None and record.state == STARTED and record.worker == worker and record.started_at:
            leases.observe_duration(view, max(self._clock() - record.started_at, 0.0))
        if record is not None and (record.worker != worker or record.state not in (STARTED, DISPATCHED)):
            # A task this coordinator never counted against the worker's slots: it started and
            # finished between two heartbeats, too fast for a `started` event (the worker sends
            # one only after started_after). Its slot was taken and given back unseen.
            return
        view.free = min(view.free + 1, view.concurrency or view.free + 1)

    def _worker(self, worker: str) -> WorkerView:
        view = self._workers.get(worker)
        if view is None:
            view = self._workers[worker] = WorkerView(worker)
        return view

    def _on_worker(self, message: Message) -> None:
        if not message.payload:
            return  # a cleared retained state
        state = codec.decode_worker_state(message.payload, topic=message.topic, max_payload=self.settings.max_payload)
        worker = self.topics.worker_of(message.topic) or state.worker
        now = self._clock()
        view = self._worker(worker)
        view.state = state.state
        if state.state == "offline":
            view.free = 0
            self._worker_lost(worker, now)
            return
        view.queues = tuple(state.queues)
        view.concurrency = state.concurrency
        view.heartbeat_s = state.heartbeat_s
        view.last_seen = 0.0 if message.retain else now  # a retained state may be old: not proof of life
        full_ago = state.full_ago if (state.waiting or 0) == 0 else 0.0
        view.full_at = now - full_ago if full_ago is not None and full_ago >= 0 else None
        held = {t.id: t.attempt for t in state.tasks}
        for task_id, attempt in held.items():
            record = self._get_or_create(task_id)
            self._save(record, leases.on_started(record, attempt, worker, state.heartbeat_s, now, self.policy))
        pending = {i for i in self._inflight.get(worker, set())
                   if (r := self._live.get(i)) is not None and r.state == DISPATCHED and r.worker == worker}
        self._inflight[worker] = pending
        view.free = max(0, (state.free or 0) - len(pending - held.keys())) if state.state == "online" else 0

    def _worker_lost(self, worker: str, now: float) -> None:
        self._worker(worker).lost_at = now
        lost = [r for r in self._live.values() if r.worker == worker and r.state in (STARTED, DISPATCHED)]
        if lost:
            log.warning("coordinator: worker %s went offline holding %d task(s); dispatching them again",
                        worker, len(lost))
        for record in lost:
            self._save(record, leases.on_worker_lost(record, worker, now, self.policy))
        self._inflight.pop(worker, None)

    # -- timers and dispatch -------------------------------------------------------------
    def _schedule(self, record: TaskRecord) -> None:
        """Make sure the timer heap holds an entry for the record's next due time (or an earlier one)."""
        due = leases.next_due(record)
        if due is not None and due < self._due.get(record.id, float("inf")):
            self._due[record.id] = due
            heapq.heappush(self._timers, (due, record.id))

    def _tick(self, now: float) -> None:
        """Run the timers that are due: O(due x log live), not a pass over every live record.

        An entry may be early (the record's timer moved later since, e.g. a renewed lease) or
        stale (the record finished): the record is then only rescheduled or skipped."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            due, task_id = heapq.heappop(timers)
            if self._due.get(task_id) == due:
                del self._due[task_id]
            record = self._live.get(task_id)
            if record is not None:
                self._fire(record, now)

    def _fire(self, record: TaskRecord, now: float) -> None:
        state, attempt = record.state, record.attempt
        if self._held_up(record, now):
            record.deadline = now + self.policy.dispatch_timeout
            self._schedule(record)
            return
        died = record.state == QUEUED and any(
            w.lost_at is not None and w.lost_at >= record.created and record.queue in w.queues
            for w in self._workers.values())
        effects = leases.on_timer(record, now, self.policy, worker_died=died)
        if record.state != state or record.attempt != attempt:
            if attempt != record.attempt and state != "retrying":
                self.stats["redispatched"] += 1
                log.info("coordinator: task %s attempt %d %s; next attempt %d", record.id, attempt,
                         record.reason or "lost", record.attempt)
            self._save(record, effects)
        elif effects:
            self._save(record, effects)
        else:
            self._schedule(record)

    def _held_up(self, record: TaskRecord, now: float) -> bool:
        """True when a task nobody accounts for is more likely waiting than lost: it is queued
        (or dispatched to one worker) and a live worker of its queue (or that worker) has had no
        free slot within the dispatch timeout. Such a task sits in that worker's broker queue,
        behind the others, where no heartbeat can list it; presuming it lost would run it twice.
        A task really lost meanwhile (a broker that dropped it, a worker that died holding it
        unstarted) is dispatched again once those workers have had room for a dispatch timeout."""
        if record.state not in (QUEUED, DISPATCHED) or record.deadline is None or record.deadline > now:
            return False
        if record.expires_at is not None and record.expires_at <= now:
            return False
        if record.state == DISPATCHED:
            view = self._workers.get(record.worker or "")
            candidates = [view] if view is not None else []
        else:
            candidates = [w for w in self._workers.values() if record.queue in w.queues]
        window = self.policy.dispatch_timeout
        return any(w.full_at is not None and now - w.full_at <= window and leases.is_live(w, now, self.policy)
                   for w in candidates)

    def _push_backlog(self, task_id: str, queue_name: str) -> None:
        if task_id not in self._in_backlog:
            self._in_backlog.add(task_id)
            self._backlog.setdefault(queue_name, deque()).append((next(self._arrivals), task_id))

    def _dispatch_backlog(self, now: float) -> None:
        """Hand backlog tasks to workers with free slots, oldest first, across the queues that have one.

        Costs O(queues x workers) to find the free slots, then O(placed): a queue without a free
        slot is not looked at, and the pass stops when nothing more can be placed.
        """
        if not self._backlog:
            return
        serving = self._serving(now)
        while serving:
            name = min(serving, key=lambda q: self._backlog[q][0][0])
            workers = serving[name]
            if not any(w.free > 0 for w in workers):
                del serving[name]
                continue
            entries = self._backlog[name]
            entry = entries.popleft()
            record = self._take_backlogged(entry[1], name)
            if record is not None and not self._dispatch_one(record, workers, entries, now):
                entries.appendleft(entry)  # no worker fits it now: it stays first
                self._in_backlog.add(entry[1])
                del serving[name]
            if not entries:
                del self._backlog[name]
                serving.pop(name, None)

    def _serving(self, now: float) -> dict[str, list[WorkerView]]:
        """Backlogged queue -> the live workers serving it, for the queues where one has a free slot."""
        serving: dict[str, list[WorkerView]] = {}
        for w in self._workers.values():
            if not leases.is_live(w, now, self.policy):
                continue
            for name in w.queues:
                if name in self._backlog:
                    serving.setdefault(name, []).append(w)
        return {q: ws for q, ws in serving.items() if any(w.free > 0 for w in ws)}

    def _take_backlogged(self, task_id: str, name: str) -> TaskRecord | None:
        """The record of a backlog entry if it is still waiting in that queue's backlog."""
        self._in_backlog.discard(task_id)
        record = self._live.get(task_id)
        if record is None or record.state != BACKLOG:
            return None
        if record.queue != name:
            self._push_backlog(task_id, record.queue)
            return None
        return record

    def _dispatch_one(self, record: TaskRecord, workers: list[WorkerView], left: deque[tuple[int, str]],
                      now: float) -> bool:
        view = leases.pick_worker(workers, record.queue, now, self.policy, backlog=len(left) + 1)
        if view is None:
            return False
        leases.on_dispatched(record, view.worker, now, self.policy)
        self._schedule(record)
        view.free -= 1
        self._inflight.setdefault(view.worker, set()).add(record.id)
        self.stats["dispatched"] += 1
        self.store.put(record)
        self._send(self.topics.inbox(view.worker), codec.encode(self._task_body(record)))
        return True

    def _task_body(self, record: TaskRecord) -> dict[str, Any]:
        body = dict(record.body or {})
        body.update(attempt=record.attempt, queue=record.queue)
        key = getattr(self.settings, "signing_key", None)
        if key is not None:
            from . import signing
            body = signing.sign(body, key)
        return body

    # -- effects -----------------------------------------------------------------------
    def _apply(self, record: TaskRecord, effect: Effect) -> None:
        if isinstance(effect, Enqueue):
            self._push_backlog(effect.task_id, record.queue)
        elif isinstance(effect, Cancel):
            self.stats["cancels"] += 1
            log.info("coordinator: telling %s to stop task %s attempt %d: %s", effect.worker, effect.task_id,
                     effect.attempt, effect.reason)
            self._send(self.topics.control(effect.worker), codec.encode(
                {"op": "cancel", "id": effect.task_id, "attempt": effect.attempt, "reason": effect.reason}))
        elif isinstance(effect, Announce):
            self._announce(record, effect)

    def _announce(self, record: TaskRecord, effect: Announce) -> None:
        if effect.state == DEAD:
            self.stats["dead"] += 1
            log.warning("coordinator: task %s is dead: %s", record.id, effect.reason)
        elif effect.state == EXPIRED:
            self.stats["expired"] += 1
        else:
            self.stats["retried"] += 1
            log.info("coordinator: task %s will be retried: %s", record.id, effect.reason)
        event = final_event(record) if effect.final else {
            "id": record.id, "state": effect.state, "attempt": record.attempt, "ts": self._clock(),
            "task": record.task, "queue": record.queue, "reason": effect.reason, "source": SOURCE,
            "next_at": effect.next_at, "correlation": record.correlation}
        payload = codec.encode({k: v for k, v in event.items() if v is not None})
        self._send(self.topics.status(record.id), payload)
        if effect.reply:
            self._reply(record, payload)
        if effect.dead_letter:
            letter = {"id": record.id, "task": record.body, "queue": record.queue, "reason": effect.reason,
                      "failures": record.failures, "attempts": record.history, "error": record.error,
                      "ts": self._clock()}
            self._send(self.topics.dead(record.queue), codec.encode({k: v for k, v in letter.items() if v is not None}))

    def _reply(self, record: TaskRecord, payload: bytes) -> None:
        if record.reply_to:
            self._send(record.reply_to, payload)
        if record.response_topic and record.response_topic != record.reply_to:
            corr = bytes.fromhex(record.correlation_data) if record.correlation_data else None
            self._send(record.response_topic, payload, correlation_data=corr)

    def _send(self, topic: str, payload: bytes, **kwargs: Any) -> None:
        self._outbox.append((topic, payload, kwargs))

    def _report(self, reason: str, topic: str | None, payload: bytes | None, task_id: str | None) -> None:
        report = events.error_report(component="coordinator", source=self.client_id, reason=reason,
                                    ts=self._clock(), topic=topic, payload=payload, task_id=task_id)
        self._send(self.topics.errors, codec.encode(report))

    def _presence(self, state: str) -> bytes:
        return codec.encode({"state": state, "ts": self._clock(), "client": self.client_id, "pid": os.getpid()})

    # -- queries -------------------------------------------------------------------------
    def _on_rpc(self, message: Message) -> None:
        request = codec.decode_json_object(message.payload, topic=message.topic, max_payload=self.settings.max_payload)
        reply_to = request.get("reply_to") or message.response_topic
        if not isinstance(reply_to, str) or not reply_to or any(c in reply_to for c in "+#"):
            raise DecodeError("query without a valid reply_to", payload=message.payload, topic=message.topic)
        op = request.get("op")
        if op == "result":
            record = self._get(str(request.get("id", "")))
            if record is not None and record.terminal:
                self._send(reply_to, codec.encode(final_event(record)), correlation_data=message.correlation_data)
            return
        answer = self._answer(op, request)
        answer["correlation"] = request.get("correlation")
        try:
            payload = codec.check_size(codec.encode(answer), self.settings.max_payload, reply_to)
        except PayloadTooLargeError as exc:
            payload = codec.encode({"ok": False, "error": str(exc), "correlation": request.get("correlation")})
        self._send(reply_to, payload, correlation_data=message.correlation_data)

    def _answer(self, op: Any, request: dict[str, Any]) -> dict[str, Any]:
        if op == "status":
            record = self._get(str(request.get("id", "")))
            if record is None:
                return {"ok": False, "error": f"no record of task {request.get('id')!r}"}
            return {"ok": True, "task": record_view(record)}
        if op == "tasks":
            state = request.get("state")
            limit = max(1, min(int(request.get("limit") or 100), 1000))
            self.store.commit()
            records = self.store.list_tasks(state if isinstance(state, str) else None, limit)
            return {"ok": True, "tasks": [record_summary(r) for r in records]}
        if op == "stats":
            return {"ok": True, "stats": dict(self.stats), "live": len(self._live), "backlog": len(self._in_backlog),
                    "counts": self.store.counts(),
                    "workers": {w.worker: {"state": w.state, "free": w.free} for w in self._workers.values()}}
        return {"ok": False, "error": f"unknown op {op!r}: use status, tasks, stats or result"}


# -- views of a record -------------------------------------------------------------------------
def record_summary(record: TaskRecord) -> dict[str, Any]:
    return {"id": record.id, "state": record.state, "task": record.task, "queue": record.queue,
            "attempt": record.attempt, "failures": record.failures, "worker": record.worker,
            "created": record.created, "updated": record.updated, "reason": record.reason,
            "duplicates": record.duplicates}


def record_view(record: TaskRecord) -> dict[str, Any]:
    view = record_summary(record)
    view.update(history=record.history, result=record.result, error=record.error,
                max_attempts=record.max_attempts, winner=record.winner, expires_at=record.expires_at)
    return view


def final_event(record: TaskRecord) -> dict[str, Any]:
    """The final status event of a finished task, as a worker or the coordinator sent it."""
    winner = record.winner or {}
    event = {"id": record.id, "state": record.state, "attempt": winner.get("attempt") or record.attempt,
             "ts": record.updated, "worker": winner.get("worker"), "task": record.task, "queue": record.queue,
             "final": True, "reason": record.reason, "correlation": record.correlation, "source": SOURCE}
    if record.state == SUCCEEDED:
        event["result"] = record.result
    elif record.error:
        event["error"] = record.error
    return {k: v for k, v in event.items() if v is not None or k == "result"}


# -- entry points ------------------------------------------------------------------------------
def run_coordinator(
    settings: Settings,
    db_path: str,
    *,
    stop_event: threading.Event | None = None,
    policy: LeasePolicy | None = None,
    client_id: str | None = None,
    ready: threading.Event | None = None,
) -> int:
    """Run a coordinator on the SQLite file ``db_path`` until ``stop_event`` is set (or Ctrl-C)."""
    stop_event = stop_event or threading.Event()
    coordinator = Coordinator(settings, db_path, policy=policy, client_id=client_id).start()
    if ready is not None:
        ready.set()
    try:
        while not stop_event.wait(1.0):
            pass
    except KeyboardInterrupt:
        log.info("coordinator: interrupted")
    finally:
        coordinator.stop()
    return 0


def _ask(settings: Settings, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    topics = Topics(settings.prefix)
    client_id = f"mqtt-tasks-q-{uuid.uuid4().hex[:12]}"
    reply_topic = topics.replies(client_id)
    answers: queue.SimpleQueue[Message] = queue.SimpleQueue()
    conn = Connection(settings, client_id, on_message=answers.put)
    conn.subscribe(reply_topic)
    conn.connect(timeout)
    correlation = uuid.uuid4().hex
    try:
        conn.publish(topics.rpc, codec.encode({**request, "reply_to": reply_topic, "correlation": correlation}),
                     response_topic=reply_topic, correlation_data=correlation.encode())
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = answers.get(timeout=left)
            except queue.Empty:
                break
            try:
                answer = codec.decode_json_object(message.payload, topic=message.topic)
            except DecodeError:
                continue
            if answer.get("correlation") == correlation:
                return answer
    finally:
        conn.close(1.0)
    raise CoordinatorTimeoutError(f"no coordinator answered on {topics.rpc} within {timeout}s")


def query_status(settings: Settings, task_id: str, timeout: float = 5.0) -> dict[str, Any]:
    """A task's record (state, attempts, history, result) from a running coordinator."""
    answer = _ask(settings, {"op": "status", "id": task_id}, timeout)
    if not answer.get("ok"):
        raise TaskNotFoundError(str(answer.get("error") or f"no record of task {task_id!r}"))
    task: dict[str, Any] = answer["task"]
    return task


def query_tasks(settings: Settings, state: str | None = None, limit: int = 100,
                timeout: float = 5.0) -> list[dict[str, Any]]:
    """Task summaries, most recently updated first, optionally of one state."""
    answer = _ask(settings, {"op": "tasks", "state": state, "limit": limit}, timeout)
    if not answer.get("ok"):
        raise MqttTasksError(str(answer.get("error")))
    tasks: list[dict[str, Any]] = answer["tasks"]
    return tasks


def query_stats(settings: Settings, timeout: float = 5.0) -> dict[str, Any]:
    """The coordinator's counters, live and backlog sizes, and its view of the workers."""
    return _ask(settings, {"op": "stats"}, timeout)
