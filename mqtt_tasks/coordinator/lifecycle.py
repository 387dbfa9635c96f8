"""The ``Coordinator`` facade: builds the parts, connects, starts and stops the loop.

Built on these facts:

- The coordinator's MQTT session is persistent (``session_expiry``, manual acks, a Receive
  Maximum of 65535) so that what it has not acknowledged is redelivered after a crash; its Last
  Will and its retained presence on ``P/coordinator`` tell workers whether a coordinator runs
  (a worker without one replies and gives up on failures itself). ``online`` says whether the
  broker still had the session (``resumed``): when it had not, what was queued for the coordinator
  is gone, and producers that keep unconfirmed tasks re-send them to ``P/record/{queue}``.
- Subscriptions are made before connecting, so none is missing after a reconnect; the loop thread
  runs before the first message can arrive.
- Stopping finishes the batch at hand (committed, acknowledged, published), then announces
  ``offline`` (retained), disconnects and closes the store it opened (a store it was given is
  committed and left open).
- The network thread only hands off: ``receive``, ``connected`` and ``disconnected`` put one item
  on the loop's queue. They are public so that an injected connection can be wired to them.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from ..config import Settings
from ..errors import MqttTasksError, StoreError
from ..leases import LeasePolicy, Rng, WorkerView
from ..protocol import codec, events
from ..protocol.states import OFFLINE
from ..protocol.topics import Topics
from ..store.base import Store
from ..store.leadership import Lease
from ..store.opening import open_store
from ..transport import Connection, Message, Will
from .admin import Admin
from .backlog import Backlog
from .cancels import CancelRequests
from .deploys import Rollouts
from .effects import Effects
from .fleet import Fleet
from .handlers import Handlers
from .loop import CONNECTED, DISCONNECTED, LINGER_GAP_S, LINGER_S, MSG, ConnectionLike, Loop
from .outage import Outage
from .queries import Queries
from .ratelimits import RateGate
from .records import Records
from .schedules import Schedules
from .timers import Timers
from .workflows import Workflows

log = logging.getLogger(__name__)

STATS = ("recorded", "dispatched", "redispatched", "retried", "dead", "expired", "succeeded", "duplicates",
         "cancels", "rejected", "cancelled", "commits", "commit_us")


class Coordinator:
    """The durable record of every task. ``with Coordinator(settings, "tasks.db"): ...``

    ``store``: a ``Store``, an SQLite path, a ``postgresql://`` URL, or None (in memory).
    ``lease``: this coordinator's leadership of the prefix, held in the store's database (``store``
    is then that store): every commit checks it (``store/leadership.py``), and the presence names
    the leader (``name``) and its epoch. ``connection``: a Connection-like
    object (``ConnectionLike``) to use instead of the one the coordinator builds (tests, embedding);
    its owner routes what it receives to ``receive``, and its connects and drops to ``connected``
    and ``disconnected``.
    """

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
        linger_s: float = LINGER_S,
        linger_gap_s: float = LINGER_GAP_S,
        clock: Callable[[], float] = time.time,
        rng: Rng = random.random,
        connection: ConnectionLike | None = None,
        lease: Lease | None = None,
        name: str | None = None,
    ) -> None:
        self.settings = settings
        self.topics = Topics(settings.prefix)
        self._owns_store = not isinstance(store, Store)
        self.store: Store = store if isinstance(store, Store) else open_store(store)
        self.name = name
        self.lease = lease
        if lease is not None:
            if lease.store is not self.store:
                raise ValueError("a coordinator's lease must be held in its own store")
            lease.store.fence = lease
        self.policy = policy or LeasePolicy()
        self.client_id = client_id or "mqtt-tasks-coordinator-" + settings.prefix.replace("/", "_")
        self.batch_size = batch_size
        self.tick_s = tick_s
        self.linger_s = linger_s
        self.linger_gap_s = linger_gap_s
        self.stats: dict[str, int] = dict.fromkeys(STATS, 0)
        self._clock = clock
        self._stopped = threading.Event()
        self._connection: ConnectionLike = connection if connection is not None else self._default_connection(
            session_expiry)
        self._build_parts(rng)

    def _default_connection(self, session_expiry: int) -> Connection:
        will = events.presence(OFFLINE, None, self.client_id, None, name=self.name)
        return Connection(self.settings, self.client_id, on_message=self.receive, manual_ack=True,
                          session_expiry=session_expiry, receive_maximum=65535,
                          will=Will(self.topics.coordinator, codec.encode(will)),
                          on_connect=self.connected, on_disconnect=self.disconnected)

    def _build_parts(self, rng: Rng) -> None:
        clock, stats, policy = self._clock, self.stats, self.policy
        self._fleet = Fleet(policy)
        timers = Timers(policy, self._fleet, stats)
        self._backlog = Backlog(policy, self._fleet, stats, RateGate(self.store))
        self._effects = Effects(self.settings, self.topics, self.client_id, self._backlog, clock, stats)
        if self.lease is not None:
            self._effects.identity = {"name": self.name, "epoch": self.lease.epoch}
        self._records = Records(self.store, policy, timers, self._backlog, self._effects.apply, clock, stats)
        self._queries = Queries(self.settings, self.topics, self._records, self._fleet, self._backlog,
                                self._effects, stats, clock)
        self._queries.ops.update(Admin(self._records, clock).ops())
        cancels = CancelRequests(self.settings, self.topics, self._records, self._effects, clock)
        self._workflows = Workflows(self.settings, self.topics, self._records, self._effects, policy, clock, stats)
        self._records.finished.append(self._workflows.on_task_final)
        self._queries.workflows = cancels.workflows = self._workflows
        handlers = Handlers(self.settings, self.topics, self._records, self._fleet, self._effects, self._queries,
                            policy, clock, rng, stats, cancels, self._workflows)
        if self.lease is not None:
            handlers.on_presence = self._on_presence
        self._outage = Outage(self._effects.store_outage)
        self._loop = Loop(self._connection, self.topics, self._records, timers, self._backlog, self._effects,
                          self._outage, handlers.on_message, self._went_online, clock, self.batch_size, self.tick_s,
                          stats, self.linger_s, self.linger_gap_s)
        self._put = self._loop.items.put
        self._schedules = Schedules(self.settings, self.topics, self._records, self._effects, policy, clock, stats)
        self._queries.ops.update(self._schedules.ops)
        self._loop.idle_hooks.append(self._schedules.tick)
        self._rollouts = handlers.deploys = Rollouts(self.topics, self.store, self._fleet, self._effects, clock)
        self._queries.ops.update(self._rollouts.ops)
        self._loop.idle_hooks.append(self._rollouts.tick)

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> Coordinator:
        """Load the live record, subscribe, connect; returns when running."""
        recovered = self._records.recover()
        log.info("coordinator %s: %d live task(s) recovered from the store", self.client_id, recovered)
        log.info("coordinator %s: %d schedule(s) in the store", self.client_id, self._schedules.recover())
        log.info("coordinator %s: %d running workflow(s) in the store", self.client_id, self._workflows.recover())
        log.info("coordinator %s: %d rollout(s) in the store", self.client_id, self._rollouts.recover())
        windows = self._backlog.gate.recover(self._clock())
        log.info("coordinator %s: %d rate-limit window(s) in the store", self.client_id, windows)
        for topic in (self.topics.all_tasks, self.topics.all_record, self.topics.all_status, self.topics.all_workers,
                      self.topics.rpc, self.topics.rpc_query, self.topics.rpc_deploy, self.topics.all_cancel,
                      self.topics.workflows, self.topics.all_deploy_status):
            self._connection.subscribe(topic)
        if self.lease is not None:  # to say online again over a former leader's late Last Will
            self._connection.subscribe(self.topics.coordinator)
        self._loop.start()
        self._connection.connect()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Commit, announce ``offline`` (retained), disconnect."""
        if self._stopped.is_set():
            return
        self._loop.stop(timeout)
        self._stopped.set()
        try:
            self._connection.publish(self.topics.coordinator, self._effects.presence(OFFLINE), retain=True)
        except MqttTasksError as exc:
            log.warning("coordinator: could not announce offline: %s", exc)
        self._connection.close()
        try:
            if self._owns_store:
                self.store.close()
            else:
                self.store.commit()
        except StoreError as exc:  # the outage was said; its messages stay with the broker
            log.error("coordinator: %s", exc)
        log.info("coordinator %s stopped", self.client_id)

    def abandon(self, timeout: float = 2.0) -> None:
        """Step down without a word: this coordinator no longer leads (``lease``). The connection is
        dropped first, so nothing decided from here on is acknowledged or published (the broker
        keeps it for the next leader, and sends this one's Last Will); then the loop ends, and a store
        the coordinator opened is closed with what it buffered discarded (the next leader decides it
        again; a store it was given is its owner's to discard)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        log.warning("coordinator %s (%s) stepping down: dropping its connection", self.client_id, self.name)
        abort = getattr(self._connection, "abort", self._connection.close)
        abort()
        interrupt = getattr(self.store, "interrupt", None)
        if interrupt is not None and not (self.lease and self.lease.valid()):
            interrupt()  # a statement may hang on a partitioned link
        self._loop.stop(timeout)
        discard = getattr(self.store, "discard", None)
        if self._owns_store and discard is not None:
            discard()
        log.info("coordinator %s (%s) stepped down", self.client_id, self.name)

    def __enter__(self) -> Coordinator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _went_online(self) -> None:
        """On the loop's thread, after every (re)connect."""
        self._records.extend_leases(self._clock())
        presence = self._outage.presence  # online, or degraded while the store cannot commit
        resumed = getattr(self._connection, "session_present", None)
        self._effects.send_now(self.topics.coordinator, self._effects.presence(presence, resumed), retain=True)
        log.info("coordinator %s %s at %s (%d live tasks)", self.client_id, presence, self.settings.display_url,
                 len(self._records.live))

    def _on_presence(self, message: Message) -> None:
        """On the loop's thread, leading one of several coordinators: another coordinator's presence
        (a former leader's Last Will, sent when the broker noticed it was gone, which can be after this
        one said online) must not stand as the last word: say this one's again."""
        try:
            name = codec.decode_json_object(message.payload).get("name") if message.payload else None
        except MqttTasksError:
            name = None
        if name != self.name:
            self._effects.send_now(self.topics.coordinator, self._effects.presence(self._outage.presence), retain=True)

    # -- hand-offs from the network thread ---------------------------------------------
    def receive(self, message: Message) -> None:
        """A message from the connection: decided on the loop's thread, acknowledged after its commit."""
        self._put((MSG, message))

    def connected(self, first: bool) -> None:
        """The connection is up (``first``: for the first time): leases get a grace, presence goes out."""
        self._put((CONNECTED, first))

    def disconnected(self, reason: str) -> None:
        """The connection dropped: timers and backlog dispatch wait for the next ``connected``."""
        self._put((DISCONNECTED, reason))

    @property
    def deposed(self) -> bool:
        """A commit found another coordinator's epoch on the lease: this one must step down."""
        return self._loop.deposed

    @property
    def connection(self) -> ConnectionLike:
        """The connection the coordinator uses (built by it, or the one it was given)."""
        return self._connection

    # -- read-only views (safe from any thread; a moment's state) ----------------------
    @property
    def live_count(self) -> int:
        """Tasks not finished yet."""
        return len(self._records.live)

    @property
    def workflow_count(self) -> int:
        """Workflows not finished yet (chains, groups, chords, sagas)."""
        return len(self._workflows.live)

    @property
    def backlog_size(self) -> int:
        """Tasks waiting in the backlog for a worker with a free slot."""
        return len(self._backlog)

    def workers(self) -> dict[str, WorkerView]:
        """Copies of what the coordinator believes about each worker it has heard of."""
        return {w.worker: dataclasses.replace(w) for w in list(self._fleet.views.values())}

    def snapshot(self) -> dict[str, Any]:
        """The counters, live and backlog sizes and the workers' states and free slots, as the
        ``stats`` query answers them (without the store's counts)."""
        return self._queries.snapshot()


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
