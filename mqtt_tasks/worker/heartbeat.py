"""Heartbeat: the worker's retained state on ``P/workers/{worker}``, every ``heartbeat_s``, and
at once on every (re)connect and when the worker starts draining.

Facts it is built on:

- Leases ride on heartbeats: the state lists every attempt held (id, attempt, start time), which
  renews all their leases in one message; a worker whose heartbeats stop is presumed dead within
  a few intervals (docs/design.md). ``free``, ``waiting`` and ``full_ago`` tell the coordinator which
  workers can take tasks from its backlog.
- The state is retained, so a coordinator or monitor that subscribes later gets the latest one;
  the Last Will (``offline``, no tasks) is retained too, and is what the broker publishes for a
  worker that vanishes without a DISCONNECT.
- A heartbeat that fails is logged and retried at the next beat: it never ends the thread.
- None is published while disconnected: paho would queue it (a stale state, useless), and a
  queued publish keeps paho's network thread from stopping until the socket times out, which
  held a worker starting without a network (``outbox.connect_until_up``) for a keep-alive.
  The connection's ``on_connect`` asks for one at once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import __version__
from ..protocol import codec, events
from ..protocol.states import DRAINING, OFFLINE, ONLINE
from ..protocol.topics import Topics
from ..transport import Connection
from .dispatch import Dispatcher
from .running import Running

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Identity:
    """What a worker's state says about it that does not change while it runs."""

    worker_id: str
    queues: list[str]
    concurrency: int
    heartbeat_s: float
    group: str
    labels: tuple[str, ...] = ()


def state_payload(identity: Identity, state: str, *, tasks: list[dict[str, Any]], free: int, waiting: int,
                  full_ago: float | None, stuck: int | None = None, code: dict[str, str] | None = None) -> bytes:
    """The retained worker state: the heartbeat, or (``offline``, no tasks) the Last Will."""
    return codec.encode(events.worker_state(
        identity.worker_id, state, time.time(), queues=identity.queues, concurrency=identity.concurrency,
        tasks=tasks, heartbeat_s=identity.heartbeat_s, free=free, waiting=waiting, full_ago=full_ago,
        group=identity.group, labels=list(identity.labels) or None, pid=os.getpid(), host=socket.gethostname(),
        version=__version__, stuck=stuck or None, code=code or None,
    ))


def last_will(identity: Identity) -> bytes:
    return state_payload(identity, OFFLINE, tasks=[], free=0, waiting=0, full_ago=None)


class Heartbeat:
    """Publishes the worker's state; ``run`` is the heartbeat thread's body."""

    def __init__(self, identity: Identity, topics: Topics, conn: Connection, running: Running,
                 dispatch: Dispatcher, beat_now: threading.Event, stopped: threading.Event) -> None:
        self._identity = identity
        self._topic = topics.worker(identity.worker_id)
        self._conn = conn
        self._running = running
        self._dispatch = dispatch
        self._beat_now = beat_now
        self._stopped = stopped
        self.code: Callable[[], dict[str, str]] | None = None  # module -> version deployed (worker/deploys.py)

    def run(self) -> None:
        while not self._stopped.is_set():
            self._beat_now.wait(self._identity.heartbeat_s)
            self._beat_now.clear()
            if self._stopped.is_set():
                return
            if not self._conn.connected:
                continue  # a stale state queued in paho is worth nothing; one goes out on the next connect
            try:
                self.publish(DRAINING if self._dispatch.draining else ONLINE)
            except Exception:
                log.exception("worker %s: heartbeat failed", self._identity.worker_id)

    def publish(self, state: str) -> None:
        self._conn.publish(self._topic, self.payload(state), retain=True)

    def payload(self, state: str) -> bytes:
        slots = self._dispatch.slots
        tasks = [{"id": a.id, "attempt": a.attempt, "started": a.started}
                 for a in self._running.attempts()] if state != OFFLINE else []
        cancels = self._dispatch.cancels
        return state_payload(self._identity, state, tasks=tasks, free=slots.offered() if state == ONLINE else 0,
                             waiting=len(slots.line), full_ago=slots.full_ago(time.monotonic()),
                             stuck=cancels.stuck() if cancels is not None else None,
                             code=self.code() if self.code is not None else None)
