"""The worker: receive -> start or defer -> run on a bounded pool -> report.

Threads, and what each decides (every decision about slots and the line of waiting tasks is
taken under one lock, ``_lock``, by whichever thread has the event in hand, so a task costs no
hand-off between threads beyond the one into the pool):

- ``mqtt-net-*`` (paho): decodes, validates and decides each incoming message as it is read. A
  task starts when a slot is free; otherwise it waits here, unacknowledged (MQTT 5 Receive Maximum
  stops the broker from sending more). When a coordinator is online, a waiting task that is not
  expected to start within ``defer_after`` seconds of its arrival (its wait so far plus its place
  in line times the recent gap between freed slots) is handed to the coordinator (``deferred``),
  so a busy worker never sits on work another could start, while short tasks, which free slots
  every few milliseconds, wait their turn here instead of paying a round trip through the
  coordinator.
- ``mqtt-task-thread-*`` / ``mqtt-task-loop``: run task bodies, publish their results, and give
  their slot back, starting the next waiting task if there is one.
- ``mqtt-worker-timer``: what is due with no message to prompt it: waiting tasks that expire or
  are overdue for the coordinator, and ``started`` events of tasks still running after
  ``started_after``. It sleeps until the earliest of those.
- ``mqtt-worker-heartbeat``: publishes the retained worker state every ``heartbeat_s``.

Shutdown order (``stop``): stop taking tasks (unsubscribe), hand back what has not started,
finish running tasks within the grace period while still heartbeating, publish ``offline``,
disconnect.
"""

from __future__ import annotations

import heapq
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import __version__
from .app import TaskApp, TaskDef
from .config import DEFAULT_DEFER_AFTER, DEFAULT_STARTED_AFTER, Settings
from .errors import DecodeError, PayloadTooLargeError, UnknownTaskError
from .execution import Executor, Outcome, Run
from .protocol import codec, events
from .protocol.states import DEFERRED, EXPIRED, FAILED, STARTED, SUCCEEDED
from .protocol.topics import DEFAULT_GROUP, Topics, check_name
from .protocol.validate import TaskData
from .signing import SignatureError, verify_payload
from .transport import Connection, Message, Will

log = logging.getLogger(__name__)

DEFAULT_MAX_ATTEMPTS = 3
MAX_TASK_TIMEOUT = 10 * 365 * 86400.0
"""A task's ``timeout`` above this (ten years) is treated as this: a wire value such as 1e300 must
not overflow the time-limit thread's wait and so disable time limits for every task."""
MAX_QUEUED_QOS0 = 1000
"""QoS 0 tasks waiting for a free slot; more are dropped (counted in ``stats["dropped"]``).
QoS 1 tasks are never dropped here: the broker's in-flight window bounds them (MQTT 5 Receive
Maximum, else Mosquitto's ``max_inflight_messages``), because they are acknowledged only once they
start or are handed on."""
ANNOUNCE_EVERY = 0.02
"""The timer thread publishes due ``started`` events at most this often (seconds), in batches:
under load a task starts every fraction of a millisecond, and a wake-up per task would cost
more than the events themselves."""


@dataclass(slots=True)
class Waiting:
    """A task received while every slot was busy; unacknowledged until it starts or is handed on."""

    message: Message
    task: TaskData
    since: float  # time.monotonic() when it arrived


@dataclass(slots=True)
class Held:
    """A task this worker has started and not yet reported."""

    task: TaskData
    message: Message
    started: float
    run: Run | None = None
    announced: bool = False  # its `started` event is published
    finishing: bool = False  # its final event is being published: too late for `started`


class Worker:
    """Takes tasks for ``app``'s queues and runs them with bounded concurrency."""

    def __init__(
        self,
        app: TaskApp,
        *,
        queues: list[str] | None = None,
        concurrency: int | None = None,
        worker_id: str | None = None,
        group: str = DEFAULT_GROUP,
        settings: Settings | None = None,
        heartbeat_s: float | None = None,
        grace: float = 30.0,
        defer_after: float = DEFAULT_DEFER_AFTER,
        started_after: float = DEFAULT_STARTED_AFTER,
    ) -> None:
        self.app = app
        self.settings = settings or app.settings
        self.topics = Topics(self.settings.prefix)  # settings may override the app's prefix
        self.queues = [check_name("queue", q) for q in (queues or app.queues)]
        self.concurrency = max(1, concurrency or min(32, (os.cpu_count() or 1) * 4))
        self.worker_id = check_name("worker id", worker_id or default_worker_id())
        self.group = check_name("share group", group)
        self.heartbeat_s = heartbeat_s or self.settings.heartbeat_s
        self.grace = grace
        if defer_after < 0:
            raise ValueError("defer_after must be >= 0")
        self.defer_after = defer_after
        if started_after < 0:
            raise ValueError("started_after must be >= 0")
        self.started_after = started_after

        # Dispatch state (free slots, the line, acks to send, timers): taken by the network thread
        # for each message, by task threads to give a slot back, by the timer thread when due.
        # Order: _lock, then _held_lock; never the other way. Reentrant: a run can end inside the
        # call that starts or cancels it (an async task done at once, a cancelled future's
        # callbacks), and its slot is given back in that same thread.
        self._lock = threading.Condition(threading.RLock())
        self._timer_due = float("inf")  # time.monotonic() the timer thread sleeps until
        self._stopping = False
        self._qos0_waiting = 0  # of the tasks in _waiting: QoS 0 ones (bounded), ones with an expiry
        self._expiring_waiting = 0
        self._held: dict[str, Held] = {}
        self._held_lock = threading.Condition()
        self._waiting: deque[Waiting] = deque()
        self._acks: list[Message] = []  # decided under _lock, sent when it is let go
        self._free = self.concurrency
        self._last_release = time.monotonic()
        self._release_gap = 0.0  # moving average of the time between freed slots
        self._full_at: float | None = None  # time.monotonic() when the worker last had no free slot
        self._to_announce: list[tuple[float, str, int]] = []  # heap of (due, task id, attempt)
        self._coordinator_online = False
        self._draining = False
        self._stopped = threading.Event()
        self._started = False
        self._beat_now = threading.Event()
        self._executor = Executor(self.concurrency)
        self._conn = Connection(
            self.settings, self.worker_id, on_message=self._enqueue, manual_ack=True,
            will=Will(self.topics.worker(self.worker_id), self._state_payload("offline")),
            receive_maximum=max(2 * self.concurrency, 8),
            # paho's own reads: Mosquitto sends past Receive Maximum (tests/test_transport.py), and
            # reading faster only lengthens the line of waiting tasks, which then gets deferred.
            buffered_reads=False,
            on_connect=lambda first: self._beat_now.set(),
        )
        self._threads: list[threading.Thread] = []
        self.stats = {"started": 0, "succeeded": 0, "failed": 0, "deferred": 0, "rejected": 0,
                      "dropped": 0}

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> Worker:
        """Connect, subscribe and start the threads; returns when ready to take tasks."""
        for q in self.queues:
            self._conn.subscribe(self.topics.shared_tasks(self.group, q))
        self._conn.subscribe(self.topics.inbox(self.worker_id))
        self._conn.subscribe(self.topics.control(self.worker_id))
        self._conn.subscribe(self.topics.coordinator)
        self._spawn("mqtt-worker-timer", self._timer_loop)
        self._spawn("mqtt-worker-heartbeat", self._heartbeat_loop)
        self._conn.connect()
        self._started = True
        log.info("worker %s ready: queues %s, concurrency %d, group %s", self.worker_id,
                 ",".join(self.queues), self.concurrency, self.group)
        return self

    def stop(self, grace: float | None = None) -> None:
        """Graceful stop: take no more, hand back what has not started, finish what runs."""
        if self._stopped.is_set():
            return
        grace = self.grace if grace is None else grace
        self._decide(self._on_drain)
        self._beat_now.set()
        unfinished = self._wait_idle(grace)
        if unfinished:
            log.warning("worker %s: %d task(s) still running after %.1fs grace: %s", self.worker_id,
                        len(unfinished), grace, ", ".join(unfinished))
        self._stopped.set()
        with self._lock:
            self._stopping = True
            self._lock.notify()
        self._beat_now.set()
        for thread in self._threads:
            thread.join(5.0)
        self._publish_state("offline")
        self._conn.close()
        self._executor.shutdown(wait=False)
        log.info("worker %s stopped", self.worker_id)

    def run(self) -> None:
        """Start and block until ``stop`` is called (from a signal handler or another thread)."""
        if not self._started:
            self.start()
        self._stopped.wait()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def held(self) -> list[str]:
        with self._held_lock:
            return list(self._held)

    def _spawn(self, name: str, target: Any) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _wait_idle(self, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        with self._held_lock:
            while self._held and (left := deadline - time.monotonic()) > 0:
                self._held_lock.wait(left)
            return list(self._held)

    # -- deciding: under _lock, in whichever thread has the event ------------------------
    def _decide(self, handler: Callable[..., None], *args: Any) -> None:
        """Run ``handler`` under the dispatch lock, then send the acks it decided, in one write."""
        with self._lock:
            try:
                handler(*args)
            except Exception:
                log.exception("worker %s: error in %r", self.worker_id, handler)
            acks, self._acks = self._acks, []
        if acks:
            self._conn.ack_many(acks)

    def _enqueue(self, message: Message) -> None:
        """paho's network thread: decide the message now (decoding it costs less than a hand-off)."""
        self._decide(self._on_message, message)

    def _release(self, task: TaskData) -> None:
        """A task thread (or the event loop) whose run is over gives its slot back."""
        self._decide(self._on_release, task)

    def _timer_loop(self) -> None:
        """Sleep until something is due with no message to prompt it, do it, repeat."""
        last_run = 0.0
        while True:
            with self._lock:
                if self._stopping:
                    return
                wait = self._until_next_wakeup()
                if self._to_announce:  # batched: see ANNOUNCE_EVERY
                    wait = max(wait if wait is not None else 0.0, last_run + ANNOUNCE_EVERY - time.monotonic())
                self._timer_due = time.monotonic() + wait if wait is not None else float("inf")
                self._lock.wait(wait)
                self._timer_due = float("inf")
                if self._stopping:
                    return
            self._decide(self._on_timer)
            last_run = time.monotonic()

    def _on_timer(self) -> None:
        self._expire_waiting()
        if self._to_announce and self._to_announce[0][0] <= time.monotonic():
            self._announce_due()
        if self._waiting and self._coordinator_online:
            self._defer_overdue()

    def _wake_timer(self, due: float) -> None:
        """Under _lock: make the timer thread wake by ``due`` (time.monotonic()) if it sleeps longer."""
        if due < self._timer_due:
            self._timer_due = due
            self._lock.notify()

    def _on_message(self, message: Message) -> None:
        topic = message.topic
        if topic == self.topics.coordinator:
            self._on_presence(message)
            self._acks.append(message)  # unacked, it would hold a Receive Maximum slot for good
        elif topic.startswith(self.topics.control_root):
            self._on_control(message)
            self._acks.append(message)
        else:
            self._on_task_message(message)

    def _on_task_message(self, message: Message) -> None:
        task = self._decode_task(message)
        if task is None:
            self._acks.append(message)
            return
        _apply_message_expiry(task, message)
        if self._reject_early(task, message):
            self._acks.append(message)
        elif self._draining:
            self._hand_back(task, message)
        elif self._free > 0:
            self._start(task, message)
        elif self._coordinator_online and self._expected_wait(len(self._waiting), 0.0) > self.defer_after:
            self._defer(task, message)
        elif message.qos == 0 and self._qos0_waiting >= MAX_QUEUED_QOS0:
            self.stats["dropped"] += 1  # QoS 0 is best effort, and no broker window bounds it
        else:
            # Unacked: flow control holds the rest back; with a coordinator online it is handed
            # on once it is not expected to start within defer_after (see _defer_overdue).
            now = time.monotonic()
            self._waiting.append(Waiting(message, task, now))
            self._qos0_waiting += message.qos == 0
            self._expiring_waiting += task.expires_at is not None
            self._full_at = now
            if self._coordinator_online:
                self._wake_timer(now + self.defer_after / 4)
            if task.expires_at is not None:
                self._wake_timer(now + max(0.0, task.expires_at - time.time()))

    def _decode_task(self, message: Message) -> TaskData | None:
        queue_name = self.topics.queue_of(message.topic)
        try:
            task = codec.decode_task_data(message.payload, topic=message.topic, queue=queue_name,
                                          max_payload=self.settings.max_payload)
            if self.settings.signing_key is not None:
                verify_payload(message.payload, self.settings.signing_key)
            return task
        except (DecodeError, SignatureError) as exc:
            reason = exc.reason if isinstance(exc, DecodeError) else str(exc)
            self.stats["rejected"] += 1
            log.warning("worker %s rejected a message on %s: %s", self.worker_id, message.topic, reason)
            self._report_error(reason, message.topic, message.payload, codec.guess_id(message.payload))
            return None

    def _reject_early(self, task: TaskData, message: Message) -> bool:
        """Expired, duplicate and unknown tasks end here, without taking a slot."""
        running = self._held.get(task.id)
        if running is not None and running.task.attempt == task.attempt:
            log.info("worker %s: task %s attempt %d delivered again; already running", self.worker_id,
                     task.id, task.attempt)
            return True
        if task.expires_at is not None and task.expires_at < time.time():
            self._finish(task, message, EXPIRED, {"reason": "expired before it was started"}, final=True)
            return True
        if task.task not in self.app.registry:
            err = UnknownTaskError(task.task)
            outcome = Outcome(False, None, type(err).__name__, str(err))
            self._report_outcome(task, message, outcome)
            return True
        return False

    def _start(self, task: TaskData, message: Message) -> None:
        tdef: TaskDef[Any] = self.app.registry[task.task]
        if self._free == self.concurrency:
            self._last_release = time.monotonic()  # the line's pace is timed from when work began
        self._free -= 1
        if self._free == 0:
            self._full_at = time.monotonic()
        held = Held(task, message, time.time())
        with self._held_lock:
            self._held[task.id] = held
        self.stats["started"] += 1
        if self.started_after == 0:
            held.announced = True
            self._publish_status(task, STARTED, {})
        else:  # announced only if still running then: see _announce_due
            due = time.monotonic() + self.started_after
            heapq.heappush(self._to_announce, (due, task.id, task.attempt))
            if len(self._to_announce) == 1:
                self._wake_timer(due)
        self._acks.append(message)
        log.debug("worker %s started %s %s attempt %d", self.worker_id, task.task, task.id, task.attempt)
        timeout = task.timeout if task.timeout is not None else tdef.options.timeout
        if timeout is not None:
            timeout = min(timeout, MAX_TASK_TIMEOUT)  # 1e300 would overflow the deadline thread's wait
        held.run = self._executor.submit(
            tdef.fn, task.args, task.kwargs, timeout=timeout, is_async=tdef.is_async,
            on_report=lambda outcome: self._report_outcome(task, message, outcome),
            on_release=lambda: self._release(task),
        )

    def _on_release(self, task: TaskData) -> None:
        self._free += 1
        now = time.monotonic()
        self._release_gap = 0.8 * self._release_gap + 0.2 * (now - self._last_release)
        self._last_release = now
        self._expire_waiting()
        if self._waiting and not self._draining:
            waiting = self._pop_waiting()
            self._start(waiting.task, waiting.message)

    def _pop_waiting(self) -> Waiting:
        waiting = self._waiting.popleft()
        self._qos0_waiting -= waiting.message.qos == 0
        self._expiring_waiting -= waiting.task.expires_at is not None
        return waiting

    def _recount_waiting(self) -> None:
        self._qos0_waiting = sum(w.message.qos == 0 for w in self._waiting)
        self._expiring_waiting = sum(w.task.expires_at is not None for w in self._waiting)

    def _until_next_wakeup(self) -> float | None:
        """Seconds until the timer thread has something to do unprompted: a waiting task expires
        or is due to be handed to the coordinator, or a running task's `started` is due."""
        waits = [t.task.expires_at - time.time() for t in self._waiting
                 if t.task.expires_at is not None] if self._expiring_waiting else []
        if self._waiting and self._coordinator_online:
            waits.append(self.defer_after / 4)  # re-check the line: see _defer_overdue
        if self._to_announce:
            waits.append(self._to_announce[0][0] - time.monotonic())
        return max(0.0, min(waits)) if waits else None

    def _announce_due(self) -> None:
        """Publish `started` for the tasks that have run ``started_after`` seconds and are still
        running. A task that finished sooner is reported by its final event alone; the heartbeat
        lists every task held meanwhile, so the coordinator's lease never depends on `started`."""
        now = time.monotonic()
        while self._to_announce and self._to_announce[0][0] <= now:
            _, task_id, attempt = heapq.heappop(self._to_announce)
            with self._held_lock:  # under the lock: never after the final event (see _finish)
                held = self._held.get(task_id)
                if held is None or held.finishing or held.announced or held.task.attempt != attempt:
                    continue
                held.announced = True
                self._publish_status(held.task, STARTED, {}, ts=held.started)

    def _expected_wait(self, position: int, waited: float) -> float:
        """Seconds a task at ``position`` in the line (0 = next), that has waited ``waited``
        already, is expected to spend here in all before a slot frees for it: the recent pace of
        freed slots, or without end when no slot has freed for ``defer_after`` (a stuck line)."""
        if time.monotonic() - self._last_release > self.defer_after:
            return float("inf")
        return waited + (position + 1) * self._release_gap

    def _defer_overdue(self) -> None:
        """Hand the coordinator every waiting task not expected to start within ``defer_after``
        of its arrival: long tasks ahead of it, or a line that stopped moving."""
        now = time.monotonic()
        keep: deque[Waiting] = deque()
        for waiting in self._waiting:
            if self._expected_wait(len(keep), now - waiting.since) > self.defer_after:
                self._defer(waiting.task, waiting.message)
            else:
                keep.append(waiting)
        self._waiting = keep
        self._recount_waiting()

    def _expire_waiting(self) -> None:
        """Tasks whose expiry passed while they waited here for a slot end ``expired``."""
        if not self._expiring_waiting:  # the usual case: a release costs no scan of the line
            return
        now = time.time()
        expired = [w for w in self._waiting if w.task.expires_at is not None and w.task.expires_at <= now]
        if expired:
            self._waiting = deque(w for w in self._waiting if w.task.expires_at is None or w.task.expires_at > now)
            self._recount_waiting()
        for w in expired:
            self._finish(w.task, w.message, EXPIRED, {"reason": "expired while waiting for a free slot"}, final=True)
            self._acks.append(w.message)

    def _defer(self, task: TaskData, message: Message) -> None:
        self.stats["deferred"] += 1
        self._publish_status(task, DEFERRED, {"reason": "no free slot", "body": dict(task)})
        self._acks.append(message)

    def _hand_back(self, task: TaskData, message: Message) -> None:
        """While draining: give a task that has not started to the coordinator or the queue."""
        if self._coordinator_online:
            self._defer(task, message)
            return
        self._conn.publish(self.topics.tasks(task.queue or "default"), codec.encode(task))
        self._acks.append(message)

    def _on_drain(self) -> None:
        self._draining = True
        for q in self.queues:
            self._conn.unsubscribe(self.topics.shared_tasks(self.group, q))
        while self._waiting:
            waiting = self._pop_waiting()
            self._hand_back(waiting.task, waiting.message)

    def _on_presence(self, message: Message) -> None:
        try:
            state = codec.decode_json_object(message.payload, topic=message.topic).get("state")
        except DecodeError:
            state = None  # an empty retained message clears the presence
        online = state == "online"
        if online != self._coordinator_online:
            log.info("worker %s: coordinator %s", self.worker_id, "online" if online else "offline")
        self._coordinator_online = online  # waiting tasks are handed on as they become overdue

    def _on_control(self, message: Message) -> None:
        try:
            command = codec.decode_json_object(message.payload, topic=message.topic,
                                               max_payload=self.settings.max_payload)
        except DecodeError as exc:
            self._report_error(exc.reason, message.topic, message.payload, None)
            return
        if command.get("op") == "cancel":
            self._cancel(str(command.get("id", "")), command.get("attempt"), str(command.get("reason", "")))
        else:
            self._report_error(f"unknown control op {command.get('op')!r}", message.topic, message.payload, None)

    def _cancel(self, task_id: str, attempt: Any, reason: str) -> None:
        with self._held_lock:
            held = self._held.get(task_id)
        if held is None or held.run is None:
            return
        if attempt is not None and attempt != held.task.attempt:
            return
        log.warning("worker %s: stopping task %s attempt %d: %s", self.worker_id, task_id,
                    held.task.attempt, reason)
        self._executor.cancel(held.run, reason or "cancelled by the coordinator")

    # -- reporting (task threads, and the network thread for tasks that never start) -----
    def _report_outcome(self, task: TaskData, message: Message, outcome: Outcome) -> None:
        if outcome.ok:
            self.stats["succeeded"] += 1
            extra = {"result": outcome.value}
            state = SUCCEEDED
        else:
            self.stats["failed"] += 1
            extra = {"error": outcome.error(), "max_attempts": self._max_attempts(task)}
            state = FAILED
            log.info("worker %s: task %s %s attempt %d failed: %s: %s", self.worker_id, task.task, task.id,
                     task.attempt, outcome.error_type, outcome.error_message)
        # With a coordinator online it owns a failure's fate (retry, or `dead` to the reply topic).
        final = state == SUCCEEDED or not self._coordinator_online
        if outcome.cancelled:
            final = False  # a superseded attempt: the coordinator owns the task's fate
        self._finish(task, message, state, extra, final=final)

    def _finish(self, task: TaskData, message: Message, state: str, extra: dict[str, Any], *, final: bool) -> None:
        # Publish first, forget second: stop() closes the connection once nothing is held, so a
        # task forgotten before its result is queued for sending would lose that result.
        with self._held_lock:
            held = self._held.get(task.id)
            if held is not None and held.task.attempt == task.attempt:
                held.finishing = True  # a `started` due now must not follow this event
        with self._conn.held_writes():  # the status event and the reply behind one wake-up
            payload = self._publish_status(task, state, {**extra, "final": final or None})
            if final and payload is not None:
                self._reply(task, message, payload)
        with self._held_lock:
            held = self._held.get(task.id)
            if held is not None and held.task.attempt == task.attempt:
                del self._held[task.id]
                self._held_lock.notify_all()

    def _max_attempts(self, task: TaskData) -> int:
        tdef = self.app.registry.get(task.task)
        return task.max_attempts or (tdef.options.max_attempts if tdef else None) or DEFAULT_MAX_ATTEMPTS

    def _publish_status(self, task: TaskData, state: str, extra: dict[str, Any], qos: int = 1,
                        ts: float | None = None) -> bytes | None:
        event: dict[str, Any] = {"id": task.id, "state": state, "attempt": task.attempt,
                                 "worker": self.worker_id, "ts": ts or time.time(), "task": task.task,
                                 "queue": task.queue}
        if task.correlation is not None:
            event["correlation"] = task.correlation
        event.update((k, v) for k, v in extra.items() if v is not None)
        if state == SUCCEEDED and "result" not in event:
            event["result"] = None
        payload = self._encode_event(event)
        try:
            self._conn.publish(self.topics.status(task.id), payload, qos=qos)
        except PayloadTooLargeError as exc:
            return self._publish_too_large(task, exc)
        return payload

    def _encode_event(self, event: dict[str, Any]) -> bytes:
        try:
            return codec.encode(event)
        except ValueError as exc:  # a result that is not JSON: the attempt fails instead
            event.pop("result", None)
            event.update(state=FAILED, error={"type": "TypeError", "message": f"result {exc}"})
            return codec.encode(event)

    def _publish_too_large(self, task: TaskData, exc: PayloadTooLargeError) -> bytes:
        event = {"id": task.id, "state": FAILED, "attempt": task.attempt, "worker": self.worker_id,
                 "ts": time.time(), "task": task.task, "queue": task.queue, "final": True,
                 "error": {"type": "PayloadTooLargeError", "message": str(exc)}}
        payload = codec.encode(event)
        self._conn.publish(self.topics.status(task.id), payload)
        return payload

    def _reply(self, task: TaskData, message: Message, payload: bytes) -> None:
        targets = {t for t in (task.reply_to, message.response_topic) if t}
        for topic in targets:
            if topic.startswith(self.topics.prefix + "/") and not topic.startswith(self.topics.replies_root):
                # A reply there would be read as a task, heartbeat or dead letter (docs/security.md).
                self._report_error(f"refusing to reply on protocol topic {topic!r}", topic, None, task.id)
                continue
            correlation = message.correlation_data if topic == message.response_topic else None
            try:
                self._conn.publish(topic, payload, correlation_data=correlation)
            except (ValueError, PayloadTooLargeError) as exc:
                self._report_error(f"cannot reply on {topic!r}: {exc}", topic, None, task.id)

    def _report_error(self, reason: str, topic: str | None, payload: bytes | None, task_id: str | None) -> None:
        report = events.error_report(component="worker", source=self.worker_id, reason=reason,
                                           ts=time.time(), topic=topic, payload=payload, task_id=task_id)
        self._conn.publish(self.topics.errors, codec.encode(report))

    # -- heartbeat ---------------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        while not self._stopped.is_set():
            self._beat_now.wait(self.heartbeat_s)
            self._beat_now.clear()
            if self._stopped.is_set():
                return
            try:
                self._publish_state("draining" if self._draining else "online")
            except Exception:
                log.exception("worker %s: heartbeat failed", self.worker_id)

    def _publish_state(self, state: str) -> None:
        self._conn.publish(self.topics.worker(self.worker_id), self._state_payload(state), retain=True)

    def _state_payload(self, state: str) -> bytes:
        with self._held_lock:
            held = [{"id": h.task.id, "attempt": h.task.attempt, "started": h.started}
                    for h in self._held.values()] if state != "offline" else []
        full_at = self._full_at
        full_ago = 0.0 if self._free <= 0 else (round(time.monotonic() - full_at, 3) if full_at else None)
        return codec.encode({
            "worker": self.worker_id, "state": state, "queues": self.queues,
            "concurrency": self.concurrency, "tasks": held, "ts": time.time(),
            "heartbeat_s": self.heartbeat_s, "free": max(self._free, 0) if state == "online" else 0,
            "waiting": len(self._waiting), "full_ago": full_ago,
            "group": self.group, "pid": os.getpid(), "host": socket.gethostname(), "version": __version__,
        })


def _apply_message_expiry(task: TaskData, message: Message) -> None:
    """An MQTT 5 Message Expiry Interval (the time left, as the broker delivered it) becomes
    ``expires_at``, so a task that expires while it waits in this worker, or in the coordinator's
    backlog after a deferral, still ends ``expired`` instead of vanishing."""
    if message.expiry is None:
        return
    deadline = time.time() + message.expiry
    if task.expires_at is None or deadline < task.expires_at:
        task["expires_at"] = deadline


def default_worker_id() -> str:
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
