"""Receipts: a producer keeps each task it sent until a coordinator says it recorded it.

Built on these facts (docs/broker-facts.md, docs/operations.md "What a broker crash can lose"):

- Mosquitto's PUBACK means "in my memory", not "on disk": it saves sessions and queued messages
  every ``autosave_interval``, so a ``kill -9`` loses what arrived since the last save, and a
  message nobody is subscribed to is dropped with a PUBACK all the same. Only the coordinator's
  commit makes a task durable, and it cannot re-dispatch a task it never saw.
- The coordinator confirms what it committed with one receipt per commit on each task's
  ``receipt_to`` (its reply topic + ``/receipts`` here), whether the task was new, a
  redelivery or a re-send: a task with a receipt is the coordinator's to finish.
- A re-send goes to ``P/record/{queue}``, which only the coordinator reads, never to the shared
  task topic: a worker that ran the first copy never sees the second, and the coordinator, which
  de-duplicates by id, dispatches the copy only if it has no record of the id (``leases.on_resent``).
- The coordinator's presence is retained on ``P/coordinator``; its ``online`` says whether the
  broker still had its session (``resumed``). Not resumed: whatever was queued for it is gone.
  A broker crash also drops this producer's connection: what was sent before a reconnect may be
  gone too, whatever the coordinator's session says (it may have been saved before those tasks).

The policy, ``Unconfirmed``, is pure (it takes ``now`` and the connection's generation); the
``ReceiptKeeper`` around it owns one named thread that re-sends, and is fed by the network
thread, which only records what arrived.

- Kept while a coordinator is known on the prefix (a presence was seen, even ``offline``: its
  session keeps the tasks), and before the first presence wait is over. No presence within
  ``presence_wait_s`` of the first connect, or a cleared one: nothing is kept, best effort as
  without a coordinator.
- Re-sent: when the coordinator comes online without its session (all kept tasks) or for the
  first time after this producer reconnected (tasks sent on an older connection); and any task
  without a receipt for ``timeout_s`` while the coordinator is online, with the timeout doubling,
  up to ``max_timeouts`` times, after which it is given up (logged).
- A workflow (``P/workflows``, canvas.py) is kept the same way, with its id, but also while no
  coordinator is known: only a coordinator runs a workflow, and one published before any
  coordinator had a session at the broker was dropped by it. It is re-sent to ``P/workflows``
  (only the coordinator reads it, and it takes a workflow id once) when a coordinator comes online.
- Bounded: at most ``max_bytes`` of payloads; beyond it the oldest kept task is given up (logged
  once per episode) rather than blocking ``send``: a producer never waits on a coordinator.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .errors import DecodeError, MqttTasksError
from .protocol import codec
from .protocol.states import ONLINE
from .transport import Message

log = logging.getLogger(__name__)

UNKNOWN, NONE, KNOWN = "unknown", "none", "known"
"""Whether a coordinator exists on the prefix, as far as the producer has seen."""


@dataclass(frozen=True)
class ReceiptPolicy:
    """How long and how much a producer keeps the tasks it sent, waiting for receipts."""

    timeout_s: float = 30.0        # no receipt this long with the coordinator online: re-send
    max_timeouts: int = 5          # re-sends after a timeout (doubling) before giving a task up
    max_bytes: int = 64 * 1024 * 1024  # payloads kept at most; the oldest is given up beyond it
    presence_wait_s: float = 2.0   # no coordinator presence this long after connecting: keep nothing
    tick_s: float = 0.5            # how often the keeper looks for timeouts


class Kept:
    """A task (or workflow) sent and not yet confirmed."""

    __slots__ = ("topic", "payload", "sent_at", "generation", "timeouts", "needs_coordinator")

    def __init__(self, topic: str, payload: bytes, sent_at: float, generation: int,
                 needs_coordinator: bool = False) -> None:
        self.topic = topic          # where a re-send goes: P/record/{queue}, or P/workflows
        self.payload = payload
        self.sent_at = sent_at      # monotonic; kept in order of it
        self.generation = generation
        self.timeouts = 0
        self.needs_coordinator = needs_coordinator  # a workflow: kept even while no coordinator is known


Resend = tuple[str, Kept]


class Unconfirmed:
    """The kept tasks in the order they were (re-)sent. Pure: not thread-safe, no clock of its own."""

    def __init__(self, policy: ReceiptPolicy) -> None:
        self.policy = policy
        self.entries: OrderedDict[str, Kept] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.entries)

    def keep(self, task_id: str, topic: str, payload: bytes, now: float, generation: int,
             needs_coordinator: bool = False) -> list[str]:
        """Keep a sent task; returns the ids given up to stay within ``max_bytes`` (oldest first)."""
        old = self.entries.pop(task_id, None)
        if old is not None:
            self.bytes -= len(old.payload)
        self.entries[task_id] = Kept(topic, payload, now, generation, needs_coordinator)
        self.bytes += len(payload)
        dropped = []
        while self.bytes > self.policy.max_bytes and len(self.entries) > 1:
            ident, kept = self.entries.popitem(last=False)
            self.bytes -= len(kept.payload)
            dropped.append(ident)
        return dropped

    def confirm(self, ids: list[str]) -> int:
        """The coordinator recorded these; how many were kept here."""
        entries, done = self.entries, 0
        for ident in ids:
            kept = entries.pop(ident, None)
            if kept is not None:
                self.bytes -= len(kept.payload)
                done += 1
        return done

    def release_all(self) -> int:
        """No coordinator on the prefix: forget the tasks (best effort, as without receipts), keep
        the workflows (only a coordinator runs one: it gets them when it comes). How many went."""
        released = [ident for ident, kept in self.entries.items() if not kept.needs_coordinator]
        return self.confirm(released)

    def on_online(self, resumed: bool, generation: int, now: float) -> list[Resend]:
        """The coordinator came online: what to re-send now. Every kept task's timeout restarts."""
        resend = []
        for ident, kept in self.entries.items():
            if not resumed or kept.generation < generation:
                kept.generation = generation
                resend.append((ident, kept))
            kept.sent_at = now
        return resend

    def due(self, now: float, generation: int) -> tuple[list[Resend], list[str]]:
        """Tasks whose receipt is overdue: (to re-send, to give up). Re-sent ones move to the end."""
        policy = self.policy
        resend: list[Resend] = []
        give_up: list[str] = []
        for ident, kept in self.entries.items():
            if kept.sent_at + policy.timeout_s > now:
                break  # kept in order of sent_at: nothing later is due
            if kept.sent_at + policy.timeout_s * 2 ** kept.timeouts > now:
                continue
            if kept.timeouts >= policy.max_timeouts:
                give_up.append(ident)
            else:
                resend.append((ident, kept))
        for ident, kept in resend:
            kept.timeouts += 1
            kept.sent_at, kept.generation = now, generation
            self.entries.move_to_end(ident)
        for ident in give_up:
            self.bytes -= len(self.entries.pop(ident).payload)
        return resend, give_up


class ReceiptKeeper:
    """Keeps what ``TaskApp`` sent until receipts confirm it; re-sends on its own thread."""

    def __init__(self, name: str, policy: ReceiptPolicy, publish: Callable[[str, bytes], object],
                 generation: Callable[[], int], clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.policy = policy
        self.unconfirmed = Unconfirmed(policy)
        self.coordinator = UNKNOWN
        self.online = False
        self.given_up = 0
        self._publish = publish
        self._generation = generation
        self._clock = clock
        self._cond = threading.Condition()
        self._came_online: tuple[bool, int] | None = None  # (resumed, generation) to act on
        self._waiting_since: float | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._overflowing = False

    @property
    def keeping(self) -> bool:
        """Whether a task sent now should ask for a receipt and be kept."""
        return self.coordinator != NONE

    # -- from send (the caller's thread) --------------------------------------------------
    def keep(self, task_id: str, topic: str, payload: bytes, *, needs_coordinator: bool = False) -> None:
        """Keep a task until its receipt; ``needs_coordinator`` (a workflow): even while no
        coordinator is known on the prefix, until one comes online and records it."""
        with self._cond:
            dropped = self.unconfirmed.keep(task_id, topic, payload, self._clock(), self._generation(),
                                            needs_coordinator)
            if self._thread is None and not self._stopping:
                self._start()
        if dropped:
            self._gave_up(dropped, "more than max_bytes waiting for receipts", overflow=True)
        elif self._overflowing:
            self._overflowing = False

    def forget(self, task_id: str) -> None:
        """The task was never published after all."""
        with self._cond:
            self.unconfirmed.confirm([task_id])

    # -- from the network thread: record and notify, nothing else --------------------------
    def connected(self) -> None:
        with self._cond:
            if self._waiting_since is None:
                self._waiting_since = self._clock()

    def on_receipt(self, message: Message) -> None:
        try:
            ids = codec.decode_json_object(message.payload, topic=message.topic).get("ids")
        except DecodeError as exc:
            log.warning("%s: undecodable receipt on %s: %s", self.name, message.topic, exc)
            return
        if isinstance(ids, list):
            with self._cond:
                self.unconfirmed.confirm(ids)
                if not self.unconfirmed:
                    self._cond.notify_all()

    def on_presence(self, message: Message) -> None:
        try:
            presence = codec.decode_json_object(message.payload, topic=message.topic)
        except DecodeError:
            presence = None  # an empty retained message: the coordinator was removed from the prefix
        with self._cond:
            self._presence(presence)
            self._cond.notify_all()

    def _presence(self, presence: dict[str, object] | None) -> None:
        if presence is None:
            self.coordinator, self.online = NONE, False
            self.unconfirmed.release_all()
            return
        self.coordinator, self.online = KNOWN, presence.get("state") == ONLINE
        if self.online:
            generation = self._generation()
            # a retained `online` seen again after our own reconnect counts: the broker may have
            # restarted and lost what we sent before it, whatever the coordinator's session says
            resumed = presence.get("resumed") is not False
            self._came_online = (resumed, generation)

    # -- the keeper's thread ---------------------------------------------------------------
    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"mqtt-tasks-receipts-{self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait(self.policy.tick_s)
                if self._stopping:
                    return
                resend, give_up = self._decide(self._clock())
            for ident, kept in resend:
                self._resend(ident, kept)
            if give_up:
                self._gave_up(give_up, f"no receipt after {self.policy.max_timeouts} re-sends")

    def _decide(self, now: float) -> tuple[list[Resend], list[str]]:
        """Under the lock: what to re-send and what to give up, at ``now``."""
        if self.coordinator == UNKNOWN and self._waiting_since is not None \
                and now - self._waiting_since >= self.policy.presence_wait_s:
            self.coordinator = NONE
            released = self.unconfirmed.release_all()
            log.info("%s: no coordinator on this prefix; %d task(s) sent without receipts", self.name, released)
        resend: list[Resend] = []
        if self._came_online is not None:
            resumed, generation = self._came_online
            self._came_online = None
            resend = self.unconfirmed.on_online(resumed, generation, now)
        if not self.online:
            return resend, []
        due, give_up = self.unconfirmed.due(now, self._generation())
        return resend + due, give_up

    def _resend(self, ident: str, kept: Kept) -> None:
        try:
            self._publish(kept.topic, kept.payload)
        except (MqttTasksError, ValueError) as exc:
            log.warning("%s: cannot re-send task %s to %s: %s", self.name, ident, kept.topic, exc)

    def _gave_up(self, ids: list[str], why: str, *, overflow: bool = False) -> None:
        self.given_up += len(ids)
        if overflow and self._overflowing:
            return  # said once per episode
        self._overflowing = overflow
        log.warning("%s: gave up waiting for the coordinator's receipt of %d task(s) (%s), e.g. %s; "
                    "they are the broker's alone now", self.name, len(ids), why, ids[0])

    # -- waiting and stopping ----------------------------------------------------------------
    def wait_recorded(self, timeout: float) -> bool:
        """Wait until every kept task is confirmed (or given up); False on timeout."""
        deadline = self._clock() + timeout
        with self._cond:
            while self.unconfirmed:
                left = deadline - self._clock()
                if left <= 0:
                    return False
                self._cond.wait(min(left, self.policy.tick_s))
        return True

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)
