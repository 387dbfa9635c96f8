"""The ``Worker``: builds the parts, owns the threads, starts and stops them in order.

Facts it is built on:

- paho subscriptions are not restored after a reconnect, and amqtt / Mosquitto 2.0.11 may lose
  durable ``$share`` subscriptions: the connection re-subscribes on every connect, so they are
  declared before it connects (docs/broker-facts.md).
- Manual acknowledgement (``manual_ack=True``) is what lets a waiting task stay unacknowledged;
  the MQTT 5 Receive Maximum (2 x concurrency, at least 8) bounds how many the broker sends
  ahead. paho's own socket reads are kept (``buffered_reads=False``): Mosquitto sends past
  Receive Maximum (tests/test_transport.py), and reading faster only lengthens the line of
  waiting tasks, which then gets deferred.
- The Last Will is the retained ``offline`` state: what the broker publishes when a worker
  vanishes without a DISCONNECT, so the coordinator re-dispatches its tasks at once.
- Shutdown follows dramatiq's order: stop taking work, finish or hand back what is running while
  still heartbeating (the heartbeat keeps the leases of running tasks alive), then disconnect.
- Python cannot kill a thread. A task still running when the grace is over is handed back (to the
  coordinator, which dispatches it again as attempt + 1, or onto its queue) *before* ``offline``
  says the worker is gone, and its result is never published afterwards (running.py): the
  coroutine is cancelled, the thread gets ``TaskCancelled`` raised in it (a call blocked in C sees
  it only when it returns), and a process that serves the worker (``supervisor.serve``) exits at
  once with ``os._exit`` so that such a thread dies with it (``stale_runs``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable

from ..app import TaskApp
from ..config import DEFAULT_DEFER_AFTER, DEFAULT_STARTED_AFTER, Settings
from ..execution import Executor, Run
from ..protocol import labels as label_rules
from ..protocol.labels import check_labels
from ..protocol.states import DRAINING, OFFLINE, ONLINE
from ..protocol.topics import DEFAULT_GROUP, Topics, check_name
from ..tracing import Attempts
from ..transport import Connection, Message, Will
from .cancel import DEFAULT_CANCEL_GRACE, Cancels
from .deploys import Deploys
from .dispatch import Dispatcher
from .heartbeat import Heartbeat, Identity, last_will
from .intake import Intake
from .link import CoordinatorLink
from .outbox import OUTBOX_DRAIN_S, Outbox, connect_until_up
from .probe import ShareProbe
from .progress import DEFAULT_PROGRESS_EVERY, Progress
from .reporter import Reporter
from .running import Running, WorkerSnapshot
from .slots import Slots
from .stats import Counters

log = logging.getLogger(__name__)

FINISHING_WAIT = 5.0
"""Seconds ``stop`` waits, after the grace, for results already being published when it ran out."""


class Worker:
    """Takes tasks for ``app``'s queues and runs them with bounded concurrency.

    Threads, by name, and what each does:

    - ``mqtt-net-*`` (the connection's network thread): reads each message and decides it at
      once, under the dispatch lock (``receive``): start, wait in line, defer, or settle it.
    - ``mqtt-task-thread-*``: run plain task bodies, publish their results, give their slot back
      and start the next waiting task themselves.
    - ``mqtt-task-loop``: one event loop for ``async def`` tasks, started with the first.
    - ``mqtt-task-deadlines``: enforces task time limits.
    - ``mqtt-worker-timer``: what is due with no message to prompt it (expiries, deferrals of
      overdue waiting tasks, ``started`` events).
    - ``mqtt-worker-heartbeat``: the retained worker state every ``heartbeat_s``.
    - ``mqtt-worker-deploy`` (with ``deploy=(public key file, directory)``): verifies and applies
      signed code bundles (``deploys.py``, docs/deploy.md).

    Shutdown order (``stop``): 1. stop taking tasks (unsubscribe) and hand back what has not
    started; 2. let running tasks finish within ``grace`` while still heartbeating; 3. hand back
    what still runs, and cancel it; 4. stop the timer and heartbeat threads; 5. publish
    ``offline``; 6. disconnect, once every hand-back is acknowledged; 7. release the pool.

    ``connection``: a ``transport.Connection``-like object used instead of building one (tests,
    embedding). The worker subscribes, connects and closes it; it must acknowledge manually and
    hand every message it reads to ``Worker.receive``.
    """

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
        connection: Connection | None = None,
        cancel_grace: float = DEFAULT_CANCEL_GRACE,
        progress_every: float = DEFAULT_PROGRESS_EVERY,
        labels: Iterable[str] = (),
        outbox: str | None = None,
        deploy: tuple[str, str] | None = None,
    ) -> None:
        self.app = app
        self.settings = settings or app.settings
        self.topics = Topics(self.settings.prefix)  # settings may override the app's prefix
        self.queues = [check_name("queue", q) for q in (queues or app.queues)]
        self.concurrency = max(1, concurrency or min(32, (os.cpu_count() or 1) * 4))
        self.worker_id = check_name("worker id", worker_id or default_worker_id())
        self.group = check_name("share group", group)
        self.labels = check_labels(labels)
        self.heartbeat_s = heartbeat_s or self.settings.heartbeat_s
        self.grace = grace
        if defer_after < 0:
            raise ValueError("defer_after must be >= 0")
        self.defer_after = defer_after
        if started_after < 0:
            raise ValueError("started_after must be >= 0")
        self.started_after = started_after
        self.cancel_grace = cancel_grace
        self.progress_every = progress_every
        self._identity = Identity(self.worker_id, self.queues, self.concurrency, self.heartbeat_s, self.group,
                                  self.labels)
        self._stopped = threading.Event()
        self._beat_now = threading.Event()
        self._started = False
        self._stale: list[Run] = []  # runs handed back by stop(); see stale_runs
        self._threads: list[threading.Thread] = []
        self._conn = connection if connection is not None else self._make_connection()
        self._outbox = Outbox(outbox, self._conn, self.settings.max_payload, self._stopped) if outbox else None
        self._build_parts()
        self._deploys = Deploys(self.worker_id, self.labels, self.queues, app, self.topics, self._conn,
                                *deploy) if deploy else None  # (public key file, directory): docs/deploy.md
        self._heartbeat.code = self._deploys.versions if self._deploys else None

    def _make_connection(self) -> Connection:
        return Connection(
            self.settings, self.worker_id, on_message=self.receive, manual_ack=True,
            will=Will(self.topics.worker(self.worker_id), last_will(self._identity)),
            receive_maximum=max(2 * self.concurrency, 8),
            buffered_reads=False,  # see the module docstring
            on_connect=self._on_connect,
        )

    def _on_connect(self, first: bool) -> None:
        self._beat_now.set()
        if self._outbox is not None:
            self._outbox.wake()

    def _build_parts(self) -> None:
        registry = self.app.registry
        self._counters = Counters()
        self._executor = Executor(self.concurrency)
        self._running = Running(self.started_after)
        self._link = CoordinatorLink(self.worker_id, self._running, self._executor, self.settings.max_payload)
        self._reporter = Reporter(self.worker_id, self.topics, self._outbox or self._conn, registry, self._running,
                                  self._link, self._counters)
        self._reporter.attempts = Attempts.create(self.worker_id)
        intake = Intake(self.worker_id, self.topics, self.settings, registry, self._running, self._reporter,
                        self._counters, self._link.clock, self._link, self.labels)
        self._cancels = Cancels(self.worker_id, self._running, self._executor, self._reporter, self._link,
                                self._counters, self.cancel_grace)
        progress = Progress(self._reporter, self._running, self.progress_every, lambda due: self._dispatch.wake(due))
        self._dispatch = Dispatcher(
            worker_id=self.worker_id, topics=self.topics, conn=self._conn, registry=registry,
            task_filters=self._task_filters(),
            slots=Slots(self.concurrency, self.defer_after, time.monotonic()), running=self._running,
            intake=intake, reporter=self._reporter, link=self._link, executor=self._executor,
            counters=self._counters, cancels=self._cancels, progress=progress)
        self._heartbeat = Heartbeat(self._identity, self.topics, self._conn, self._running, self._dispatch,
                                    self._beat_now, self._stopped)

    def _task_filters(self) -> list[str]:
        """Each queue's shared topic, and its routed topics for this worker's labels (docs/routing.md)."""
        return [self.topics.shared_tasks(self.group, q) for q in self.queues] + [
            self.topics.shared_routed(self.group, q, level) for q in self.queues
            for level in label_rules.combinations(self.labels)]

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> Worker:
        """Connect, subscribe and start the threads; returns when ready to take tasks."""
        self._conn.subscribe(self.topics.coordinator)  # first: whether a coordinator runs, before any task
        for topic_filter in self._task_filters():
            self._conn.subscribe(topic_filter)
        self._conn.subscribe(self.topics.inbox(self.worker_id))
        self._conn.subscribe(self.topics.control(self.worker_id))
        self._conn.subscribe(self.topics.all_cancel)  # cancels work without a coordinator (cancel.py)
        if self._deploys is not None:  # what it applied before, before any task (deploys.py)
            self._conn.subscribe(self._deploys.topic)
            self._deploys.restore()
            self._spawn("mqtt-worker-deploy", self._deploys.run)
        probe = ShareProbe(self._conn, self.topics, self.worker_id, self.group)
        self._dispatch.probe_arrived = probe.arrived
        probe.arm()
        self._spawn("mqtt-worker-timer", self._dispatch.timer.run)
        self._spawn("mqtt-worker-heartbeat", self._heartbeat.run)
        if self._outbox is not None:
            self._spawn("mqtt-worker-outbox", self._outbox.run)
        try:
            connect(self._conn, self._outbox, self._stopped, self.worker_id)
        except BaseException:
            self._halt()  # a start that failed (no broker) leaves no thread behind
            raise
        self._started = True
        if self._deploys is not None:
            self._deploys.announce()
        if self.app.schedules:  # declared with @app.periodic: the coordinator must know them
            from ..schedules import Registrar

            self._spawn("mqtt-worker-schedules", Registrar(self.settings, self.app.schedules, self._stopped).run)
        if not probe.check():
            self._share_unsupported()
        log.info("worker %s ready: queues %s, concurrency %d, group %s", self.worker_id,
                 ",".join(self.queues), self.concurrency, self.group)
        return self

    def _share_unsupported(self) -> None:
        reason = (f"the broker at {self.settings.display_url} accepted a shared subscription but routed nothing "
                  f"through it: it does not support $share (NATS, aedes, RabbitMQ 3.x and stock amqtt do not), so "
                  f"tasks published to {self.topics.tasks_root}... never reach this worker; use Mosquitto, EMQX, "
                  "HiveMQ, VerneMQ or `mqtt-tasks broker` (docs/operations.md)")
        log.warning("worker %s: %s", self.worker_id, reason)
        self._reporter.error(reason, None, None, None)

    def stop(self, grace: float | None = None) -> None:
        """Graceful stop: take no more, hand back what has not started, finish what runs.
        A worker that was never started only releases its pool."""
        if self._stopped.is_set():
            return
        if not self._started:
            self._halt()
            return
        grace = self.grace if grace is None else grace
        self._dispatch.drain()
        self._beat_now.set()  # say `draining` now
        if self._running.wait_idle(grace):
            self._hand_back_running(grace)
        self._halt()
        if self._outbox is not None and not self._outbox.drain(OUTBOX_DRAIN_S):
            log.warning("worker %s: %d message(s) stay in the outbox %s for the next start", self.worker_id,
                        self._outbox.pending(), self._outbox.path)
        self._heartbeat.publish(OFFLINE)
        self._conn.close()
        if self._outbox is not None:
            self._outbox.close()
        log.info("worker %s stopped", self.worker_id)

    def _hand_back_running(self, grace: float) -> None:
        """The grace is over: hand back every attempt still running (not one whose result is being
        published: that one is waited for), and stop its body where Python can."""
        reason = f"the worker stopped; still running after its {grace:g}s grace period"
        abandoned = self._running.abandon()
        for held in abandoned:
            self._dispatch.hand_back_started(held.task, reason)
            if held.run is not None:
                self._executor.cancel(held.run, reason)
                self._stale.append(held.run)
        if abandoned:
            log.warning("worker %s: %d task(s) still running after the %.1fs grace, handed back: %s", self.worker_id,
                        len(abandoned), grace, ", ".join(h.task.id for h in abandoned))
        self._running.wait_idle(FINISHING_WAIT, interruptible=False)

    def hurry(self) -> None:
        """Cut the grace short: a ``stop`` under way (or the next one) hands back what still runs
        now. Safe to call from any thread (``serve`` does, on a second Ctrl-C, from its signal relay)."""
        self._running.cut_short()

    @property
    def stale_runs(self) -> int:
        """Bodies handed back by ``stop``, or cancelled and abandoned, that still run (threads Python
        cannot stop). Their results
        will never be published; a process that is about to exit should ``os._exit``, which ends
        them, rather than wait for them as the interpreter's exit would."""
        return sum(1 for run in self._stale if not run.released) + self._cancels.stuck()

    def abort(self) -> None:
        """Stop as a crash would: drop the connection without a DISCONNECT (the broker then
        publishes the Last Will), hand nothing back, abandon running tasks. For tests and
        supervisors that need a dead worker."""
        if self._stopped.is_set():
            return
        self._conn.abort()
        self._halt()
        log.warning("worker %s aborted", self.worker_id)

    def _halt(self) -> None:
        self._stopped.set()
        self._dispatch.stop_timer()
        self._beat_now.set()  # the heartbeat thread sees `stopped` and ends
        if self._deploys is not None:
            self._deploys.stop()
        self._executor.shutdown(wait=False)
        for thread in [t for t in self._threads if t is not threading.current_thread()]:
            thread.join(5.0)  # the worker's own threads, not task threads (see stale_runs)

    def run(self) -> None:
        """Start and block until ``stop`` is called from another thread (a signal handler must not call
        it: ``serve`` and ``SignalLatch`` say why)."""
        if not self._started:
            self.start()
        self._stopped.wait()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # -- the receive path --------------------------------------------------------------
    def receive(self, message: Message) -> None:
        """Decide one incoming message in the calling thread, as the connection's network thread
        does for each message it reads; acknowledgements go out through the connection."""
        if self._deploys is not None and message.topic == self._deploys.topic:
            self._deploys.receive(message)
            self._conn.ack(message)
            return
        self._dispatch.receive(message)

    # -- what it holds -----------------------------------------------------------------
    @property
    def held(self) -> list[str]:
        """Ids of the tasks started here and not yet reported."""
        return self._running.ids()

    @property
    def stats(self) -> dict[str, int]:
        """A copy of the counters: started, succeeded, failed, deferred, rejected, dropped."""
        return self._counters.read()

    @property
    def coordinator_online(self) -> bool:
        """Whether the coordinator's retained presence last said ``online``."""
        return self._link.online

    @property
    def connection(self) -> Connection:
        """The connection the worker uses (built by it, or the one it was given)."""
        return self._conn

    def snapshot(self) -> WorkerSnapshot:
        """What the worker holds now: attempts held, tasks in line, free slots, counters."""
        slots = self._dispatch.slots
        if not self._started or self._stopped.is_set():
            state = OFFLINE
        else:
            state = DRAINING if self._dispatch.draining else ONLINE
        return WorkerSnapshot(self.worker_id, state, self._link.online, self.concurrency, free=slots.offered(),
                              waiting=len(slots.line), held=self._running.attempts(), stats=self._counters.read())


def connect(conn: Connection, outbox: Outbox | None, stopped: threading.Event, worker_id: str) -> None:
    """Connect once; with an outbox, keep trying until the broker answers (``connect_until_up``)."""
    if outbox is None:
        conn.connect()
    else:
        connect_until_up(conn, outbox, stopped, worker_id)


def default_worker_id() -> str:
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
