"""What the demo sees: one MQTT client subscribed to the status, worker and inbox topics.

Every figure the demo prints comes from here (or, afterwards, from the coordinator's record), so
it is what any client subscribed to ``P/status/+``, ``P/workers/+`` and ``P/inbox/+`` sees:

- ``finals``: the first final status event of each task, stamped with its arrival time;
- ``results``: the ``succeeded`` / ``failed`` events workers sent (who ran what, and duplicates);
- ``running``: per worker, the tasks it announced ``started`` and has not finished;
- ``offline``: when a worker's state turned ``offline`` (its Last Will, or a clean stop);
- ``redispatched``: tasks the coordinator sent to a worker's inbox again with ``attempt`` >= 2.

paho's network thread only queues what arrives; ``pump`` decodes it in the caller's thread.
"""

from __future__ import annotations

import logging
import queue
import time
import uuid
from dataclasses import dataclass

from ..config import Settings
from ..errors import DecodeError
from ..protocol import codec
from ..protocol.messages import StatusEvent
from ..protocol.states import TERMINAL_STATES
from ..protocol.topics import Topics
from ..transport import Connection, Message

log = logging.getLogger(__name__)

RESULT_STATES = ("succeeded", "failed")


@dataclass(frozen=True)
class Redispatch:
    arrived: float
    worker: str
    attempt: int


class Watcher:
    """``with Watcher(settings) as watcher: ... watcher.pump(0.1) ...``"""

    def __init__(self, settings: Settings) -> None:
        self.topics = Topics(settings.prefix)
        self._max_payload = settings.max_payload
        self._inbox: queue.SimpleQueue[tuple[float, Message]] = queue.SimpleQueue()
        self.finals: dict[str, tuple[float, StatusEvent]] = {}
        self.results: dict[str, set[tuple[str, int, str]]] = {}
        self.running: dict[str, dict[str, int]] = {}
        self.offline: dict[str, float] = {}
        self.redispatched: dict[str, Redispatch] = {}
        self.conn = Connection(settings, f"demo-watcher-{uuid.uuid4().hex[:6]}",
                               on_message=lambda m: self._inbox.put((time.monotonic(), m)))
        for topic in (self.topics.all_status, self.topics.all_workers, self.topics.inbox_root + "+"):
            self.conn.subscribe(topic)

    def __enter__(self) -> Watcher:
        self.conn.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.close()

    def pump(self, wait: float) -> None:
        """Take in everything that arrived, waiting up to ``wait`` seconds for the first message."""
        try:
            item = self._inbox.get(timeout=wait)
        except queue.Empty:
            return
        while True:
            self._take(*item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def done(self, ids: set[str]) -> int:
        return len(ids & self.finals.keys())

    def ran(self, worker: str, ids: set[str]) -> int:
        """How many of ``ids`` the worker ran to a result (success or failure)."""
        return sum(1 for i in ids for w, _, _ in self.results.get(i, ()) if w == worker)

    def ran_it(self, worker: str, task_id: str) -> bool:
        """True when ``worker`` sent a result for the task."""
        return any(w == worker for w, _, _ in self.results.get(task_id, ()))

    def duplicates(self, ids: set[str]) -> int:
        """Results beyond the first for the same task: a task run to the end more than once."""
        return sum(max(0, len({a for _, a, _ in self.results.get(i, ())}) - 1) for i in ids)

    def _take(self, arrived: float, message: Message) -> None:
        topic = message.topic
        try:
            if topic.startswith(self.topics.status_root):
                self._on_status(arrived, codec.decode_status(message.payload, max_payload=self._max_payload))
            elif topic.startswith(self.topics.workers_root) and message.payload:
                state = codec.decode_worker_state(message.payload, max_payload=self._max_payload)
                if state.state == "offline":
                    self.offline.setdefault(state.worker, arrived)
            elif topic.startswith(self.topics.inbox_root):
                self._on_inbox(arrived, topic.removeprefix(self.topics.inbox_root), message.payload)
        except DecodeError as exc:
            log.warning("demo: undecodable message on %s: %s", topic, exc.reason)

    def _on_status(self, arrived: float, event: StatusEvent) -> None:
        if event.worker is not None:
            held = self.running.setdefault(event.worker, {})
            if event.state == "started":
                held[event.id] = event.attempt
            elif event.state in RESULT_STATES:
                held.pop(event.id, None)
                self.results.setdefault(event.id, set()).add((event.worker, event.attempt, event.state))
        if (event.final or event.state in TERMINAL_STATES) and event.id not in self.finals:
            self.finals[event.id] = (arrived, event)

    def _on_inbox(self, arrived: float, worker: str, payload: bytes) -> None:
        body = codec.decode_json_object(payload, max_payload=self._max_payload)
        task_id, attempt = body.get("id"), body.get("attempt")
        if isinstance(task_id, str) and isinstance(attempt, int) and attempt > 1:
            self.redispatched.setdefault(task_id, Redispatch(arrived, worker, attempt))
