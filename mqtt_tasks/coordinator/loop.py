"""The loop: one thread, ``mqtt-coordinator``, owns every piece of coordinator state.

The paho network thread only hands off (``Coordinator.receive``, ``connected`` and
``disconnected`` put an item on one queue and return). The loop does, over and over::

    take a batch of up to batch_size items (wait at most tick_s for the first; when one was
    waiting already, for more while they keep coming: until a gap of gap_s, linger_s at most)
    -> prefetch the batch's records that are not live, in one store query
    -> decide each message (handlers -> leases.*), changing records, fleet, backlog, timers
    -> when idle (or FORCED_TICK_S went by) and online: fire due timers (leases, dispatch
       timeouts, retries, expiry); then the ``idle_hooks`` (schedules.py: due fires)
    -> when online: dispatch backlog tasks to workers with free slots; every PRESENCE_EVERY
       seconds, a reading of the fleet's clock for the workers (``Effects.tell_the_time``)
    -> store.commit()            one commit per batch
    -> ack the batch             the broker may now forget these messages
    -> publish the effects       status, replies, dead letters, inbox dispatches, cancels, answers

While the store cannot commit (``outage``): the batch's acks and effects are held, the next
batches are decided in memory on top of it, the commit is retried with backoff, and only
answers and the presence (``degraded``) go out; the first commit that succeeds writes every
record that waited, and the loop acks and publishes everything it held.

Built on these facts:

- A message is acknowledged only after the commit that records it, and the MQTT session is
  persistent (``session_expiry``), so a ``kill -9`` loses nothing that was acknowledged: the
  broker redelivers the rest, and the handlers treat a redelivery as the echo it is.
- Effects are published after the commit, so nothing the coordinator says (a retry, a dispatch,
  a dead letter) can be forgotten by a coordinator that restarts: at worst it is said twice.
- Throughput comes from batching (docs/benchmarks.md): one wake-up, one prefetch query, one commit,
  one PUBACK burst per batch. The per-message work is the handler and nothing else.
- Under a stream of messages (one was already waiting when the loop came back for more) a batch
  lingers while they keep coming (``LINGER_GAP_S`` between two, ``LINGER_S`` in all): at 1,000
  tasks/s messages arrive one at a time, and a commit, an ack write and a wake-up per message or
  two made the coordinator the busiest process on the machine (2.4-3.0 CPU s per 5,000 tasks
  measured at 1,000 tasks/s, 1.4-1.8 with the linger), taking the CPU from the workers on a shared
  host (docs/benchmarks.md, "Latency from outside"). A message that finds the loop idle (a chain's
  step, a query) is decided at once: lingering there cost a 100-step chain 4-5 ms a step. Acks
  still follow the commit: they leave a few ms later, which costs the fast path nothing (the
  broker already delivered the task to a worker).
- Timers do not run while a burst is being drained, except every ``FORCED_TICK_S``: a burst
  must not starve lease expiry, and a lease check per batch would cost more than the batch.
- An unexpected error in a batch is logged and the loop goes on; the batch's messages are not
  acknowledged, so the broker delivers them again after a reconnect.
- A ``StoreError`` from ``commit`` is no unexpected error: it is an outage, said once (``outage``).
  ``LeadershipLostError`` (another coordinator leads now) is no outage: the loop holds everything
  and says so once; its owner (``standby``) steps down.

See docs/coordinator.md.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import LeadershipLostError, MqttTasksError, StoreError
from ..protocol import codec

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..protocol.topics import Topics
    from ..transport import Message
    from .backlog import Backlog
    from .effects import Effects
    from .outage import Outage
    from .records import Records
    from .timers import Timers

log = logging.getLogger(__name__)

FORCED_TICK_S = 2.0
"""Timers run at least this often while messages keep arriving."""
LINGER_S = 0.01
"""Seconds a batch may wait in all after its first message for more (one commit, one ack write)."""
LINGER_GAP_S = 0.002
"""Seconds without a message that end a lingering batch."""
PRESENCE_EVERY = 15.0
"""Seconds between the live presences that let workers read the fleet's clock (besides one on
every (re)connect and one when a worker that was not live is heard): workers keep the least
delayed of their recent readings, so a few a minute keep them true (worker/fleet_clock.py)."""

# The kinds of items on the loop's queue.
MSG = "msg"
CONNECTED = "connected"
DISCONNECTED = "disconnected"
STOP = "stop"

Item = tuple[str, Any]


class ConnectionLike(Protocol):
    """What the coordinator needs of its connection (``transport.Connection`` is one).

    It must deliver what it receives to ``Coordinator.receive`` (and its connects and drops to
    ``connected`` / ``disconnected``), acknowledge only through ``ack_many``, and keep a
    persistent session: the loop's guarantee rests on acks that follow the commit.
    """

    def subscribe(self, topic_filter: str, qos: int = 1) -> None: ...

    def connect(self, timeout: float | None = None) -> Any: ...

    def publish(self, topic: str, payload: bytes, *, retain: bool = False,
                correlation_data: bytes | None = None,
                user_properties: Sequence[tuple[str, str]] | None = None) -> Any: ...

    def ack_many(self, messages: Iterable[Message]) -> None: ...

    def close(self, flush_timeout: float = 5.0) -> None: ...


class Loop:
    """The owner thread: batch -> decide -> commit -> ack -> publish; timers and backlog when idle."""

    def __init__(self, connection: ConnectionLike, topics: Topics, records: Records, timers: Timers, backlog: Backlog,
                 effects: Effects, outage: Outage, on_message: Callable[[Message], None],
                 on_connected: Callable[[], None], clock: Callable[[], float], batch_size: int,
                 tick_s: float, stats: dict[str, int] | None = None, linger_s: float = 0.0,
                 gap_s: float = 0.0) -> None:
        self.items: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self._conn = connection
        self._topics = topics
        self._records = records
        self._timers = timers
        self._backlog = backlog
        self._effects = effects
        self._outage = outage
        self._unacked: list[Message] = []  # decided, not yet covered by a commit (an outage)
        self._again: list[Item] = []  # messages a failed store read left undecided: retried with the commit
        self._on_message = on_message
        self._on_connected = on_connected
        self._clock = clock
        self._batch_size = batch_size
        self._tick_s = tick_s
        self._stats = stats if stats is not None else {}  # commits and commit_us (the metrics' commit time)
        self._linger_s = linger_s
        self._gap_s = gap_s
        self._online = False
        self.deposed = False  # a commit found another leader's epoch: nothing more is acknowledged
        self._last_tick = 0.0
        self._next_reading = 0.0
        self._thread: threading.Thread | None = None
        self.idle_hooks: list[Callable[[float], None]] = []  # after the timers, e.g. schedules' firing

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mqtt-coordinator", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Finish the batch at hand (committed, acknowledged, published) and end the thread."""
        self.items.put((STOP, None))
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                if not self._flush([], stopping=True) or self._again:
                    self._outage.stopping(len(self._unacked) + len(self._again))
                return
            try:
                self._process(batch)
            except Exception:
                log.exception("coordinator: unexpected error in the loop")

    def _take_batch(self) -> list[Item] | None:
        batch: list[Item] = []
        if self._again and self._outage.due():
            batch, self._again = self._again, []
        busy = not self.items.empty()  # a message was waiting already: they are coming in a stream
        try:
            batch.append(self.items.get(timeout=self._tick_s))
        except queue.Empty:
            return batch
        until = time.monotonic() + (self._linger_s if busy else 0.0)
        while len(batch) < self._batch_size:
            try:  # while busy, more as long as they keep coming (a gap of gap_s ends it), linger_s at most
                gap = min(self._gap_s, until - time.monotonic())
                batch.append(self.items.get(timeout=gap) if gap > 0 else self.items.get_nowait())
            except queue.Empty:
                break
        if any(kind == STOP for kind, _ in batch):
            self._process([item for item in batch if item[0] != STOP])
            return None
        return batch

    def _process(self, batch: list[Item]) -> None:
        acks: list[Message] = []
        self._prefetch(batch)
        on_message = self._on_message
        for kind, value in batch:
            if kind == MSG:
                try:
                    on_message(value)
                except StoreError as exc:  # a read failed: undecided, so neither acked nor lost
                    self._again.append((kind, value))
                    self._outage.failed(exc, len(self._unacked) + len(acks))
                    continue
                acks.append(value)
            elif kind == CONNECTED:
                self._online = True
                self._on_connected()
            elif kind == DISCONNECTED:
                self._online = False
        if self._online and not self._outage.down:
            self._when_idle(self._clock())
        self._flush(acks)

    def _when_idle(self, now: float) -> None:
        since = now - self._last_tick
        if (self.items.empty() or since > FORCED_TICK_S) and since >= self._tick_s:
            self._last_tick = now
            self._timers.tick(now, self._records)
        for hook in self.idle_hooks:
            hook(now)
        self._backlog.dispatch(now, self._records, self._effects)
        if now >= self._next_reading:
            self._next_reading = now + PRESENCE_EVERY
            self._effects.tell_the_time()

    def _prefetch(self, batch: list[Item]) -> None:
        """Read the records of the batch's tasks that are not live in one query, not one per message."""
        topics, live = self._topics, self._records.live
        ids = []
        for kind, message in batch:
            if kind != MSG:
                continue
            if message.topic.startswith(topics.status_root):
                task_id = topics.task_id_of_status(message.topic)
            elif message.topic.startswith(topics.tasks_root) or message.topic.startswith(topics.record_root):
                task_id = codec.guess_id(message.payload)
            else:
                continue
            if task_id and task_id not in live:
                ids.append(task_id)
        if ids:
            try:
                self._records.store.prefetch(ids)
            except StoreError as exc:  # a hint only: each get() reads for itself
                log.debug("coordinator: prefetch failed: %s", exc)

    def _flush(self, acks: list[Message], stopping: bool = False) -> bool:
        """Commit, then ack and publish; while the store fails, hold the acks and effects and
        publish only answers. Whether everything decided so far is committed."""
        if self._unacked:
            self._unacked += acks
            acks = self._unacked
        if not self._commit(acks, stopping):
            self._unacked = acks
            self._publish(self._effects.take_now())
            return False
        self._unacked = []
        self._conn.ack_many(acks)
        self._publish(self._effects.take())
        return True

    def _commit(self, acks: list[Message], stopping: bool) -> bool:
        outage = self._outage
        if not (stopping or outage.due()):
            return False
        store = self._records.store
        began = time.perf_counter()
        try:
            written = store.commit()
        except LeadershipLostError as exc:  # deposed: no outage to announce; the owner steps down
            if not self.deposed:
                log.error("coordinator: %s; holding %d message(s) for the new leader", exc, len(acks))
            self.deposed = True
            return False
        except StoreError as exc:
            outage.failed(exc, len(acks))
            return False
        if written:
            self._stats["commits"] = self._stats.get("commits", 0) + 1
            self._stats["commit_us"] = self._stats.get("commit_us", 0) + int((time.perf_counter() - began) * 1e6)
        if outage.down and not self._again:  # over when the reads that failed have succeeded too
            outage.recovered(getattr(store, "path", type(store).__name__), written, len(acks))
        return True

    def _publish(self, outgoing: list[tuple[str, bytes, dict[str, Any]]]) -> None:
        for topic, payload, options in outgoing:
            try:
                self._conn.publish(topic, payload, **options)
            except (MqttTasksError, ValueError) as exc:
                log.error("coordinator: cannot publish to %s: %s", topic, exc)

