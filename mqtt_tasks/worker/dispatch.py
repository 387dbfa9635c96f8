"""Dispatch: every decision about slots and the line of waiting tasks, taken under one lock by
whichever thread has the event in hand, so a task costs no hand-off between threads beyond the
one into the pool:

- the network thread, for each message as it is read (``receive``): a task starts when a slot is
  free, else waits in line unacknowledged, or is handed to the coordinator (``deferred``) when it
  is not expected to start within ``defer_after`` (see slots.py); presence and control messages
  go to the coordinator link;
- a task thread (or the event loop) whose run is over (``release``): gives its slot back and
  starts the next waiting task itself;
- the timer thread (``timer.py``): what is due with no message to prompt it: waiting tasks that
  expire or are overdue for the coordinator, and ``started`` events of tasks still running after
  ``started_after``. It sleeps until the earliest of those.

Acknowledgements decided under the lock are sent after it is let go, in one write.

Facts it is built on:

- A worker acknowledges a task message once it starts or is handed on (deferred, expired,
  rejected): unacknowledged, it holds one of the broker's in-flight slots, which is the flow
  control that stops the broker sending more (MQTT 5 Receive Maximum).
- paho's callbacks must not raise (an exception kills the network thread while
  ``is_connected()`` still says True, docs/broker-facts.md): a failed decision is logged, and the acks
  decided so far are still sent.
- A task marked ``alone`` by the coordinator (a suspect, see leases.py) runs with nothing else
  running here: it waits for the running tasks to end, others arriving meanwhile are handed to the
  coordinator, and its body runs only once the broker acknowledged its ``started`` event, so a
  crash while it runs is pinned on it alone (docs/coordinator.md, "Poison tasks").
- The lock is reentrant: a run can end inside the call that starts or cancels it (an async task
  done at once, a cancelled future's callbacks), and its slot is given back in that same thread.
  Order: the dispatch lock, then ``Running``'s lock; never the other way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..app import TaskDef
from ..context import TaskContext
from ..errors import DecodeError
from ..execution import Executor
from ..protocol import codec
from ..protocol.states import DEFERRED, EXPIRED, STARTED
from ..protocol.topics import Topics
from ..protocol.validate import TaskData
from ..transport import Connection, Message
from .intake import Intake
from .link import CANCEL_TASK, CoordinatorLink
from .reporter import Reporter
from .running import Held, Running
from .slots import Slots, Waiting
from .stats import Counters
from .timer import Timer

if TYPE_CHECKING:
    from .cancel import Cancels
    from .progress import Progress

log = logging.getLogger(__name__)

MAX_TASK_TIMEOUT = 10 * 365 * 86400.0
"""A task's ``timeout`` above this (ten years) is treated as this: a wire value such as 1e300 must
not overflow the time-limit thread's wait and so disable time limits for every task."""


class Ticker(Protocol):
    """Something else the timer thread does when it is due (cancel graces, held-back progress)."""

    def next_due(self) -> float | None: ...

    def tick(self, now: float) -> None: ...


class Dispatcher:
    """The decisions under one lock, and the timer thread's loop."""

    def __init__(self, *, worker_id: str, topics: Topics, conn: Connection, registry: dict[str, TaskDef[Any]],
                 task_filters: list[str], slots: Slots, running: Running, intake: Intake, reporter: Reporter,
                 link: CoordinatorLink, executor: Executor, counters: Counters, cancels: Cancels | None = None,
                 progress: Progress | None = None) -> None:
        self.worker_id = worker_id
        self._clock = link.clock  # the fleet's time, for expiries (fleet_clock.py)
        self._topics = topics
        self._conn = conn
        self._registry = registry
        self._task_filters = task_filters
        self.slots = slots
        self._running = running
        self._intake = intake
        self._reporter = reporter
        self._link = link
        self._executor = executor
        self._counters = counters
        self.cancels = cancels
        self._progress = progress
        self.tickers: list[Ticker] = [t for t in (cancels, progress) if t is not None]
        self._lock = threading.Condition(threading.RLock())
        self._acks: list[Message] = []  # decided under _lock, sent when it is let go
        self.timer = Timer(self._lock, until_next=self._until_next_wakeup,
                           next_announcement=running.next_announcement, stopping=lambda: self._stopping,
                           on_due=lambda: self.decide(self._on_timer))
        self.draining = False
        self._stopping = False
        self.probe_arrived: Callable[[], None] = lambda: None  # set by the worker's ShareProbe

    # -- entry points: each takes the lock ---------------------------------------------------
    def receive(self, message: Message) -> None:
        """The network thread: decide the message now (decoding it costs less than a hand-off)."""
        with self._lock:
            try:
                self._route(message)
            except Exception as exc:
                self._failed_to_decide(message, exc)
            acks, self._acks = self._acks, []
        if acks:
            self._conn.ack_many(acks)

    def drain(self) -> None:
        """Take no more tasks: unsubscribe, hand back every waiting task."""
        self.decide(self._on_drain)

    def decide(self, handler: Callable[..., None], *args: Any) -> None:
        """Run ``handler`` under the dispatch lock, then send the acks it decided, in one write."""
        with self._lock:
            try:
                handler(*args)
            except Exception:
                log.exception("worker %s: error in %r", self.worker_id, handler)
            acks, self._acks = self._acks, []
        if acks:
            self._conn.ack_many(acks)

    def _failed_to_decide(self, message: Message, exc: Exception) -> None:
        """A bug, not bad input: logged with its traceback, reported, and the message acknowledged
        (unacknowledged, it would hold one of the broker's in-flight slots for this worker for good)."""
        log.exception("worker %s: error deciding a message on %s", self.worker_id, message.topic)
        if not any(m is message for m in self._acks):
            self._acks.append(message)
        try:
            self._reporter.error(f"internal error deciding this message: {type(exc).__name__}: {exc}",
                                 message.topic, message.payload, None)
        except Exception:
            log.exception("worker %s: cannot report the error", self.worker_id)

    # -- a message ---------------------------------------------------------------------------
    def _route(self, message: Message) -> None:
        topic = message.topic
        if topic == self._topics.coordinator:
            self._link.on_presence(message)
            self._acks.append(message)  # unacked, it would hold a Receive Maximum slot for good
        elif topic.startswith(self._topics.probe_root):
            self.probe_arrived()
            self._acks.append(message)
        elif topic.startswith(self._topics.control_root):
            refusal = self._link.on_control(message)
            if refusal == CANCEL_TASK:
                self._on_cancel(message, control=True)
            elif refusal is not None:
                self._reporter.error(refusal, message.topic, message.payload, None)
            self._acks.append(message)
        elif topic.startswith(self._topics.cancel_root):
            self._on_cancel(message, control=False)
            self._acks.append(message)
        else:
            self._on_task_message(message)

    def _on_cancel(self, message: Message, *, control: bool) -> None:
        """A cancel request (``P/cancel/{id}``, or the coordinator's control op for a cancelled task)."""
        if self.cancels is None:
            return
        try:
            task_id, attempt, reason = self._link.cancel_request(message, control=control)
        except DecodeError as exc:
            self._reporter.error(f"invalid cancel request: {exc.reason}", message.topic, message.payload, None)
            return
        self._acks.extend(self.cancels.cancel(task_id, reason, self.slots, attempt))
        due = self.cancels.next_due()
        if due is not None:
            self._wake_timer(due)

    def _on_task_message(self, message: Message) -> None:
        task = self._intake.admit(message)
        if task is None or (self.cancels is not None and self.cancels.refuses(task, message)):
            self._acks.append(message)
            return
        now = time.monotonic()
        slots = self.slots
        if self.draining:
            self._hand_back(task, message)
        elif task.alone:
            self._on_alone(task, message, now)
        elif slots.isolated and self._link.online:
            self._defer(task, message)  # an `alone` task runs or waits its turn here
        elif slots.free > 0 and not slots.isolated:
            self._start(task, message, now)
        elif self._link.online and slots.defer_on_arrival(now):
            self._defer(task, message)
        elif message.qos == 0 and slots.qos0_full():
            self._counters.add("dropped")  # QoS 0 is best effort, and no broker window bounds it
        else:
            self._wait(task, message, now)

    def _wait(self, task: TaskData, message: Message, now: float) -> None:
        # Unacked: flow control holds the rest back; with a coordinator online it is handed on
        # once it is not expected to start within defer_after (see Slots.take_overdue).
        self.slots.join(Waiting(message, task, now))
        if self._link.online:
            self._wake_timer(now + self.slots.defer_after / 4)
        if task.expires_at is not None:
            self._wake_timer(now + max(0.0, task.expires_at - self._clock.now()))

    def _on_alone(self, task: TaskData, message: Message, now: float) -> None:
        """A suspect the coordinator sent to run alone: now if nothing runs, else once the running
        tasks are done; the tasks waiting in line meanwhile go to the coordinator."""
        slots = self.slots
        if slots.isolated:
            self._hand_back(task, message)  # one suspect at a time
        elif slots.idle():
            self._start(task, message, now, alone=True)
        else:
            slots.alone_next = Waiting(message, task, now)
            if self._link.online:
                for waiting in slots.take_all():
                    self._defer(waiting.task, waiting.message)

    def _start(self, task: TaskData, message: Message, now: float, *, alone: bool = False) -> None:
        tdef: TaskDef[Any] = self._registry[task.task]
        self.slots.take(now)
        held = self._running.add(task, message)
        self._counters.add(STARTED)
        traced = self._reporter.begin_attempt(task, message)  # before `started`: it carries the span (tracing.py)
        if alone:  # announced before the body runs: a crash from now on convicts this task only
            self.slots.alone_running = True
            held.announced = True
            self._reporter.status(task, STARTED, {"alone": True})
        elif self._running.started_after == 0:
            held.announced = True
            self._reporter.status(task, STARTED, {})
        else:  # announced only if still running then: see Running.announce_due
            due = self._running.schedule_started(task, now)
            if due is not None:
                self._wake_timer(due)
        self._acks.append(message)
        log.debug("worker %s started %s %s attempt %d", self.worker_id, task.task, task.id, task.attempt)
        timeout = task.timeout if task.timeout is not None else tdef.options.timeout
        if timeout is not None:
            timeout = min(timeout, MAX_TASK_TIMEOUT)  # 1e300 would overflow the deadline thread's wait
        reporter = self._reporter
        fn = traced(alone_body(tdef.fn, tdef.is_async, self._conn, task.id) if alone else tdef.fn, tdef.is_async)
        held.context = TaskContext(task.id, task.task, task.attempt, task.queue or "default", self.worker_id,
                                   self._progress)
        held.run = self._executor.submit(
            fn, task.args, task.kwargs, timeout=timeout, is_async=tdef.is_async,
            on_report=lambda outcome: reporter.outcome(task, message, outcome),
            on_release=self.release_alone if alone else self.release, context=held.context,
        )

    def release(self) -> None:
        """A task thread (or the event loop) whose run is over gives its slot back, and starts the
        next waiting task if there is one."""
        self.decide(self._on_release)

    def _on_release(self) -> None:
        now = time.monotonic()
        slots = self.slots
        slots.give_back(now)
        self._expire_waiting()
        if slots.alone_next is not None:
            if slots.idle() and not slots.alone_running:
                waiting, slots.alone_next = slots.alone_next, None
                self._start(waiting.task, waiting.message, now, alone=True)
            return
        if slots.line and not (self.draining or self._stopping or slots.alone_running):
            waiting = slots.next()
            self._start(waiting.task, waiting.message, now)

    def release_alone(self) -> None:
        """An ``alone`` task's run is over: the worker takes other tasks again."""
        self.decide(self._on_release_alone)

    def _on_release_alone(self) -> None:
        self.slots.alone_running = False
        self._on_release()
        while self.slots.line and self.slots.free > 0 and not (self.draining or self._stopping):
            waiting = self.slots.next()
            self._start(waiting.task, waiting.message, time.monotonic())

    # -- handing tasks on ----------------------------------------------------------------------
    def _defer(self, task: TaskData, message: Message) -> None:
        self._reporter.defer(task, "no free slot")
        self._acks.append(message)

    def _hand_back(self, task: TaskData, message: Message) -> None:
        """While draining: give a task that has not started to the coordinator or the queue."""
        if self._link.online:
            self._defer(task, message)
            return
        self._conn.publish(self._topics.tasks(task.queue or "default"), codec.encode(task))
        self._acks.append(message)

    def hand_back_started(self, task: TaskData, reason: str) -> None:
        """After the grace: a started attempt this worker abandons (see ``Running.abandon``) goes to
        the coordinator as a ``deferred`` event marked ``abandoned``, which it dispatches again as
        attempt + 1 without counting a failure; with no coordinator online, back onto its queue as
        attempt + 1. Its message was acknowledged when it started: nothing to acknowledge."""
        self._counters.add("handed_back")
        self._reporter.end_attempt(task, "handed_back")
        if self._link.online:
            self._reporter.status(task, DEFERRED, {"reason": reason, "abandoned": True, "body": dict(task)})
            return
        self._conn.publish(self._topics.tasks(task.queue or "default"),
                           codec.encode({**task, "attempt": task.attempt + 1}))

    def _on_drain(self) -> None:
        self.draining = True
        for topic_filter in self._task_filters:
            self._conn.unsubscribe(topic_filter)
        for waiting in self.slots.take_all():
            self._hand_back(waiting.task, waiting.message)
        if self.slots.alone_next is not None:
            waiting, self.slots.alone_next = self.slots.alone_next, None
            self._hand_back(waiting.task, waiting.message)

    def _expire_waiting(self) -> None:
        """Tasks whose expiry passed while they waited here for a slot end ``expired``."""
        if not self.slots.expiring:  # the usual case: a release costs no clock read
            return
        for w in self.slots.take_expired(self._clock.now()):
            self._reporter.finish(w.task, w.message, EXPIRED, {"reason": "expired while waiting for a free slot"},
                                  final=True)
            self._acks.append(w.message)

    # -- the timer thread (timer.py): what it decides ------------------------------------------
    def stop_timer(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify()

    def _on_timer(self) -> None:
        self._expire_waiting()
        now = time.monotonic()
        due = self._running.next_announcement()
        if due is not None and due <= now:
            self._running.announce_due(now, self._announce)
        if self.slots.line and self._link.online:
            for waiting in self.slots.take_overdue(now):
                self._defer(waiting.task, waiting.message)
        for ticker in self.tickers:
            due = ticker.next_due()
            if due is not None and due <= now:
                ticker.tick(now)

    def _announce(self, held: Held) -> None:
        self._reporter.status(held.task, STARTED, {}, ts=held.started)

    def _until_next_wakeup(self) -> float | None:
        """Seconds until the timer thread has something to do unprompted: a waiting task expires
        or is due to be handed to the coordinator, or a running task's `started` is due."""
        wait = self.slots.next_check(self._clock.now(), self._link.online)
        for due in (self._running.next_announcement(), *(t.next_due() for t in self.tickers)):
            if due is not None:
                until = due - time.monotonic()
                wait = until if wait is None else min(wait, until)
        return None if wait is None else max(0.0, wait)

    def wake(self, due: float) -> None:
        """From any thread: make the timer thread wake by ``due`` (time.monotonic())."""
        self.timer.wake(due)

    def _wake_timer(self, due: float) -> None:
        self.timer.wake_locked(due)

ALONE_ANNOUNCE_TIMEOUT = 10.0
"""Seconds an ``alone`` task's body waits for the broker to acknowledge its ``started`` event."""


def alone_body(fn: Callable[..., Any], is_async: bool, conn: Connection, task_id: str) -> Callable[..., Any]:
    """``fn``, run only once the broker acknowledged the ``started`` event published just before:
    if the body then kills the process, the coordinator knows it was running, alone."""
    def announced() -> None:
        if not conn.flush(ALONE_ANNOUNCE_TIMEOUT):
            log.warning("task %s: its `started` was not acknowledged within %.0fs; running it anyway",
                        task_id, ALONE_ANNOUNCE_TIMEOUT)

    if is_async:
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            import asyncio

            await asyncio.get_running_loop().run_in_executor(None, announced)
            return await fn(*args, **kwargs)
        return run_async

    def run(*args: Any, **kwargs: Any) -> Any:
        announced()
        return fn(*args, **kwargs)
    return run
