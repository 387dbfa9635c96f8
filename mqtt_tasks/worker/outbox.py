"""The outbox: a worker's outgoing events kept on its own disk until the broker has them.

A device on a flaky network keeps running what it holds when its link drops; what it has to say
(status events with results, replies, error reports) must then outlive the link and a restart of
the worker process. With ``mqtt-worker --outbox PATH`` the reporter hands every QoS 1 message to
the outbox instead of the connection:

1. ``publish`` appends it to a SQLite table (WAL, ``synchronous=FULL``: committed before the
   call returns, so a crash or a power cut right after loses nothing) and wakes the sender; a
   final event and its reply are committed together (``held_writes``);
2. the sender thread (``mqtt-worker-outbox``) hands the stored messages to the connection in
   order, once each per process, whenever the connection is up; a restarted process starts
   with everything the old one left, oldest first, before anything new;
3. once the broker acknowledged every publish handed over (``Connection.flush``, the PUBACK
   fence), the rows are deleted.

Facts it is built on (docs/broker-facts.md): paho keeps QoS 1 publishes made while disconnected in
memory only and re-sends them after a reconnect, so within one process a message is handed over
once; after a restart, what was handed over but not acknowledged is sent again. A message may
thus arrive twice, never not at all: the coordinator's fencing makes the second copy harmless (a
result of an attempt already recorded is a duplicate; a late result of an older attempt wins only
if the task has no result yet, docs/coordinator.md). Heartbeats, progress (QoS 0) and retained
messages bypass the outbox: a stale one is worth nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, PayloadTooLargeError, TransportError

if TYPE_CHECKING:
    from ..transport import Connection

log = logging.getLogger(__name__)

_SCHEMA = """CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    correlation BLOB,
    ts REAL NOT NULL,
    props TEXT)"""
BATCH = 200
"""Messages handed to the connection per round; each round waits for their PUBACKs."""
OUTBOX_DRAIN_S = 5.0
"""On a graceful stop, how long the worker keeps delivering what its outbox holds."""
RETRY_S = (1.0, 30.0)
"""Connecting at start with an outbox: the first and the longest wait between two attempts."""
ATTEMPT_S = 3.0
"""...and how long one attempt waits for the broker's CONNACK (at most the settings' timeout)."""
IDLE_WAIT_S = 0.5
"""How long the sender sleeps with nothing to do before it checks the connection again."""


class Outbox:
    """Durable QoS 1 publishes; ``run`` is the sender thread's body. Thread-safe."""

    def __init__(self, path: str, conn: Connection, max_payload: int, stopped: threading.Event) -> None:
        self.path = path
        self._conn = conn
        self._max_payload = max_payload
        self._stopped = stopped
        self._wake = threading.Condition()
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot use {path!r} as the worker's outbox: {exc}") from exc
        self._lock = threading.RLock()  # one statement (or held_writes block) at a time on the handle
        self._handed = 0  # the last seq handed to the connection by this process
        self._confirmed = 0  # the last seq the broker acknowledged (deleted)
        self._dirty = False
        self.sent = 0

    # -- the reporter's side (same signature as Connection.publish) ---------------------------
    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                correlation_data: bytes | None = None, user_properties: Sequence[tuple[str, str]] | None = None,
                **options: Any) -> int:
        """Keep a QoS 1 message (with its MQTT 5 User Properties: a trace context) until the broker
        has it; anything else goes straight through."""
        options = {k: v for k, v in options.items() if v is not None}
        if qos == 0 or retain or options:
            return self._conn.publish(topic, payload, qos=qos, retain=retain, correlation_data=correlation_data,
                                      user_properties=user_properties, **options)
        if len(payload) > self._max_payload:
            raise PayloadTooLargeError(len(payload), self._max_payload, topic=topic)
        try:
            with self._lock:
                self._db.execute("INSERT INTO outbox (topic, payload, correlation, ts, props) VALUES (?, ?, ?, ?, ?)",
                                 (topic, payload, correlation_data, time.time(),
                                  json.dumps(list(user_properties)) if user_properties else None))
        except sqlite3.Error as exc:  # a full or broken disk: still sent, kept in memory only (paho)
            log.error("outbox %s: cannot keep a message for %s (%s); sending it without the outbox", self.path,
                      topic, exc)
            return self._conn.publish(topic, payload, qos=qos, correlation_data=correlation_data,
                                      user_properties=user_properties)
        self.wake()
        return 0

    @contextlib.contextmanager
    def held_writes(self) -> Iterator[None]:
        """The messages published inside the block are kept together or not at all (one
        transaction): a final event and its reply survive a crash as a pair."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def wake(self) -> None:
        """Something to send, or the connection is up again (its ``on_connect``)."""
        with self._wake:
            self._dirty = True
            self._wake.notify()

    # -- the sender thread -------------------------------------------------------------------
    def run(self) -> None:
        while not self._stopped.is_set():
            try:
                self.send_round(IDLE_WAIT_S)
            except Exception:  # a broken disk must not end the thread silently: say so, keep trying
                log.exception("outbox %s: sending failed; retrying", self.path)
                self._stopped.wait(IDLE_WAIT_S)

    def send_round(self, wait: float) -> int:
        """Hand what waits to the connection in order and delete what the broker acknowledged;
        sleep up to ``wait`` when there is nothing to do. Returns the messages confirmed."""
        rows = self._rows_after(self._handed) if self._conn.connected else []
        if not rows and self._handed == self._confirmed:
            self._sleep(wait)
            return 0
        for seq, topic, payload, correlation, props in rows:
            self._conn.publish(topic, payload, correlation_data=correlation,
                               user_properties=[tuple(p) for p in json.loads(props)] if props else None)
            self._handed = seq
        if not self._conn.flush(wait):
            return 0  # not acknowledged yet (the link may be down): paho re-sends them, we wait again
        with self._lock:
            deleted: int = self._db.execute("DELETE FROM outbox WHERE seq <= ?", (self._handed,)).rowcount
        self._confirmed = self._handed
        self.sent += deleted
        log.info("outbox %s: %d message(s) delivered", self.path, deleted)
        return deleted

    def _sleep(self, wait: float) -> None:
        with self._wake:
            if not self._dirty:
                self._wake.wait(wait)
            self._dirty = False

    def _rows_after(self, seq: int) -> list[tuple[int, str, bytes, bytes | None, str | None]]:
        with self._lock:
            return self._db.execute("SELECT seq, topic, payload, correlation, props FROM outbox WHERE seq > ? "
                                    "ORDER BY seq LIMIT ?", (seq, BATCH)).fetchall()

    def pending(self) -> int:
        """Messages kept and not yet acknowledged by the broker."""
        with self._lock:
            count: int = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        return count

    def drain(self, timeout: float) -> bool:
        """On stop: deliver what waits while the connection is up, up to ``timeout``; True if empty."""
        deadline = time.monotonic() + timeout
        while self.pending() and self._conn.connected and (left := deadline - time.monotonic()) > 0:
            self.send_round(min(left, IDLE_WAIT_S))
        return self.pending() == 0

    def close(self) -> None:
        with self._lock:
            self._db.close()


def connect_until_up(conn: Connection, outbox: Outbox, stopped: threading.Event, worker_id: str,
                     retry: tuple[float, float] = RETRY_S) -> None:
    """A worker with an outbox starts without a network too: it keeps trying to connect (backing
    off from ``retry[0]`` to ``retry[1]`` seconds) until it can, or until ``stopped`` is set (then
    the last ``TransportError`` is raised). What the outbox holds waits meanwhile."""
    delay = retry[0]
    if outbox.pending():
        log.warning("worker %s: %d message(s) from before wait in the outbox %s; connecting", worker_id,
                    outbox.pending(), outbox.path)
    while True:
        try:
            conn.connect(min(ATTEMPT_S, conn.settings.connect_timeout))
            return
        except TransportError as exc:
            log.warning("worker %s: offline (%s); %d message(s) wait in the outbox; next try in %.0f s",
                        worker_id, exc, outbox.pending(), delay)
            if stopped.wait(delay):
                raise
            delay = min(delay * 2, retry[1])
