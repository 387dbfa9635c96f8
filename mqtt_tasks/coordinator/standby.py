"""High availability: several coordinators on one prefix and one database; one leads, the rest stand by.

``HighAvailability.run`` goes round one cycle until it is stopped::

    stand by    open the store; every poll_s try to take the lease row (store/leadership.py)
    lead        a fresh Coordinator on that store: recover the live records, connect, run;
                every commit renews the lease and is fenced by its epoch
    step down   when the lease is no longer valid here (the database is unreachable, or another
                coordinator's epoch fenced a commit), or the broker has been unreachable for
                ``broker_grace`` (the lease is released, so a standby that can reach it leads)

Built on these facts:

- All coordinators of a prefix use the same MQTT client id with a persistent session: the session
  is the role's, not the process's. Standbys never connect it. The new leader connects it and the
  broker hands it what the old leader had not acknowledged (in flight and queued), which the
  handlers treat as the echoes they may be; a second connection with the same id closes the first
  (MQTT's session takeover), so two coordinators cannot both hold the session.
- A leader acknowledges and publishes decisions only after a commit, and every commit checks the
  epoch in its own transaction: a deposed leader can neither record nor announce anything.
- The lease runs out here (monotonic clock, from when the renewing transaction began) before it
  runs out in the database, so a leader cut from its database steps down before any standby can
  take over; it drops its connection first (``Coordinator.abandon``), so the unacknowledged
  messages stay with the broker for the next leader.
- Each leadership is a fresh ``Coordinator`` on a freshly opened store: nothing a deposed leader
  held in memory survives into its next term; the live records come from the database.
- After stepping down a coordinator waits a lease's length before it tries again, so one that
  cannot reach the broker does not take back the lease it just gave up.

See docs/coordinator.md ("High availability").
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from ..config import Settings
from ..errors import MqttTasksError, StoreError
from ..leases import LeasePolicy
from ..store.leadership import DEFAULT_TTL_S, Lease
from ..store.opening import open_store
from ..store.sqlite import SQLiteStore
from .lifecycle import Coordinator

log = logging.getLogger(__name__)

WATCH_S = 0.1
"""How often a leader checks its lease and its broker link."""

# Why a leadership ended (``HighAvailability._watch``).
STOPPED = "stopped"
LEASE_LOST = "lease lost"
BROKER_LOST = "broker lost"


def pause(stop: threading.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; True as soon as ``stop`` is set.

    ``stop`` may be a ``SignalLatch``'s event: its relay thread sets it, never the signal handler,
    so this main thread can wait on it (mqtt_tasks/signals.py says why that matters)."""
    return stop.wait(seconds)


def default_name() -> str:
    """This coordinator among several: host, process id and a few random characters."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


class HighAvailability:
    """One coordinator process in a group that shares a prefix and a database (``db``)."""

    def __init__(self, settings: Settings, db: str, *, name: str | None = None, ttl: float = DEFAULT_TTL_S,
                 poll_s: float | None = None, broker_grace: float | None = None,
                 policy: LeasePolicy | None = None, client_id: str | None = None,
                 on_lead: Callable[[Coordinator], None] | None = None,
                 on_standby: Callable[[], None] | None = None) -> None:
        self.settings, self.db, self.ttl = settings, db, ttl
        self.name = name or default_name()
        self.poll_s = poll_s if poll_s is not None else min(1.0, ttl / 5)
        self.broker_grace = broker_grace if broker_grace is not None else ttl
        self.policy, self.client_id = policy, client_id
        self.on_lead, self.on_standby = on_lead, on_standby
        self.coordinator: Coordinator | None = None  # while leading
        self.terms = 0

    def run(self, stop: threading.Event) -> int:
        """Stand by, lead, step down, ... until ``stop`` is set; then stop cleanly and release the lease."""
        while not stop.is_set():
            lease = self._stand_by(stop)
            if lease is None:
                break
            if self._lead(lease, stop) != STOPPED:
                log.warning("coordinator %s: standing by again in %.1fs", self.name, self.ttl)
                pause(stop, self.ttl)
        return 0

    # -- standing by ---------------------------------------------------------------------
    def _stand_by(self, stop: threading.Event) -> Lease | None:
        """Wait for the lease; the lease leads on ``lease.store``, opened afresh for this term."""
        store = self._open(stop)
        if store is None:
            return None
        lease = Lease(store, self.settings.prefix, self.name, self.ttl)
        log.info("coordinator %s standing by for %s", self.name, self.settings.prefix)
        failing = False
        wait = 0.0  # the first try at once
        while not pause(stop, wait):
            try:
                if lease.acquire():
                    self._ready()
                    return lease
                failing = False
            except StoreError as exc:
                if not failing:
                    log.error("coordinator %s: cannot take the leadership: %s", self.name, exc)
                failing = True
                self._unstick(lease)
            if not wait:  # the first try said whether this database is one to stand by on (ConfigError)
                self._ready()
            wait = self.poll_s
        store.discard()
        return None

    def _ready(self) -> None:
        if self.on_standby is not None:
            self.on_standby()

    def _unstick(self, lease: Lease) -> None:
        try:
            ended = lease.unstick()
        except StoreError as exc:
            log.debug("coordinator %s: cannot read the leadership: %s", self.name, exc)
            return
        if ended:
            log.warning("coordinator %s: the lease ran out while its row stayed locked: ended %d session(s) "
                        "of a leader cut off mid-commit", self.name, ended)

    def _open(self, stop: threading.Event) -> SQLiteStore | None:
        while True:
            try:
                store = open_store(self.db)
            except StoreError as exc:
                if self.terms == 0:
                    raise  # a bad location at start-up: the CLI says so and exits
                log.error("coordinator %s: %s", self.name, exc)
                if pause(stop, self.poll_s):
                    return None
                continue
            if not isinstance(store, SQLiteStore):
                raise StoreError(f"several coordinators need a database store, not {self.db!r}")
            return store

    # -- leading -------------------------------------------------------------------------
    def _lead(self, lease: Lease, stop: threading.Event) -> str:
        self.terms += 1
        store = lease.store
        coordinator = Coordinator(self.settings, store, policy=self.policy, client_id=self.client_id, lease=lease,
                                  name=self.name)
        try:
            coordinator.start()
        except MqttTasksError as exc:
            log.error("coordinator %s cannot lead: %s", self.name, exc)
            coordinator.abandon()
            self._release(lease)
            store.discard()
            return BROKER_LOST
        self.coordinator = coordinator
        if self.on_lead is not None:
            self.on_lead(coordinator)
        try:
            why = self._watch(coordinator, lease, stop)
        finally:
            self.coordinator = None
        if why == STOPPED:
            coordinator.stop()
            self._release(lease)
            store.fence = None
            store.close()
        else:
            coordinator.abandon()
            if why == BROKER_LOST:  # it still leads: a standby that reaches the broker need not wait
                self._release(lease)
            store.discard()
        return why

    def _watch(self, coordinator: Coordinator, lease: Lease, stop: threading.Event) -> str:
        """Wait until this leadership ends; say why (``STOPPED``, ``LEASE_LOST``, ``BROKER_LOST``)."""
        offline_since: float | None = None
        while not pause(stop, WATCH_S):
            if coordinator.deposed or not lease.valid():
                log.warning("coordinator %s lost the leadership of epoch %s", self.name, lease.epoch)
                return LEASE_LOST
            connected: Any = getattr(coordinator.connection, "connected", True)
            if connected:
                offline_since = None
            elif offline_since is None:
                offline_since = time.monotonic()
            elif time.monotonic() - offline_since > self.broker_grace:
                log.warning("coordinator %s: the broker has been unreachable for %gs: leadership released",
                            self.name, self.broker_grace)
                return BROKER_LOST
        return STOPPED

    def _release(self, lease: Lease) -> None:
        try:
            lease.release()
        except StoreError as exc:  # it runs out by itself
            log.warning("coordinator %s: could not release the lease: %s", self.name, exc)


def run_high_availability(settings: Settings, db: str, *, stop_event: threading.Event | None = None,
                          ready: threading.Event | None = None, **options: Any) -> int:
    """Run one coordinator of a group (``HighAvailability``) until ``stop_event`` is set (or Ctrl-C).
    ``ready`` is set when it first stands by (leading or not)."""
    stop_event = stop_event or threading.Event()
    group = HighAvailability(settings, db, on_standby=ready.set if ready is not None else None, **options)
    try:
        return group.run(stop_event)
    except KeyboardInterrupt:
        stop_event.set()
        return 0
