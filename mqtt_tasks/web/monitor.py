"""The dashboard's live view of the broker: retained worker states, status events, tasks submitted.

Built on these facts:

- One persistent connection subscribes to ``P/workers/+`` (retained: the fleet arrives at once and
  stays current; an empty payload clears a worker), ``P/status/+`` (every task's events) and
  ``P/tasks/+`` (a copy of each task as published, the start of its end-to-end latency). It takes
  no task from anyone: plain subscriptions, never ``$share``.
- The network thread only hands messages to a queue; one named thread decodes and folds them into
  the view (``Monitor.run``), so a slow reader of the view never slows the network thread.
- A task ends once, at its first final event (``final``, or a terminal state); later copies (the
  coordinator's own final event after a worker's) change nothing, until an event of a later attempt
  says it runs again (an operator's retry). The ids remembered for this are bounded (oldest
  forgotten first).
- Undecodable messages are counted and skipped: a bad payload never stops the view.
- ``version`` grows with every change: the live stream (``/api/events``) sends a new snapshot
  when it moved.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict, deque
from typing import Any, Protocol

from ..config import Settings
from ..protocol.states import FAILED, STARTED, SUCCEEDED, TERMINAL_STATES
from ..protocol.topics import Topics
from ..transport import Connection, Message
from .series import Series

log = logging.getLogger(__name__)

REMEMBERED_IDS = 50_000
RECENT_EVENTS = 200
RATE_WINDOW_S = 60.0


class Observer(Protocol):
    """What the metrics module hears from the monitor."""

    def on_event(self, state: str, queue: str) -> None: ...

    def on_finished(self, queue: str, latency: float | None, run_time: float | None) -> None: ...


class _Bounded(OrderedDict[str, float]):
    def remember(self, key: str, value: float) -> None:
        self[key] = value
        if len(self) > REMEMBERED_IDS:
            self.popitem(last=False)


class Monitor:
    """Folds the broker's worker states and task events into a view the dashboard reads."""

    def __init__(self, settings: Settings, observer: Observer | None = None) -> None:
        self.settings = settings
        self.topics = Topics(settings.prefix)
        self.observer = observer
        self.series = Series()
        self.version = 0
        self.undecodable = 0
        self._lock = threading.Lock()
        self._workers: dict[str, dict[str, Any]] = {}
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)
        self._submitted = _Bounded()
        self._started = _Bounded()
        self._ended = _Bounded()
        self._finals: deque[tuple[float, str, bool]] = deque()  # (when, queue, ok) over RATE_WINDOW_S
        self._inbox: queue.SimpleQueue[Message | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        owner = settings.username or "mqtt-tasks"  # a user's own client id prefix (protocol/rpc.py)
        self._conn = Connection(settings, f"{owner}-web-{uuid.uuid4().hex[:10]}", on_message=self._inbox.put)
        for topic in (self.topics.all_workers, self.topics.all_status, self.topics.all_tasks):
            self._conn.subscribe(topic)

    # -- lifecycle --------------------------------------------------------------------
    def start(self, timeout: float | None = None) -> Monitor:
        """Start folding, then connect (paho retries on its own while the broker is away).

        ``ConnectError`` when the broker cannot be reached now: the caller may go on without a
        live view, and ``connected`` says so."""
        self._thread = threading.Thread(target=self.run, name="mqtt-tasks-web-monitor", daemon=True)
        self._thread.start()
        self._conn.connect(timeout)
        return self

    def stop(self) -> None:
        self._conn.close(1.0)
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(5.0)

    @property
    def connected(self) -> bool:
        return self._conn.connected

    def run(self) -> None:
        while (message := self._inbox.get()) is not None:
            try:
                self.fold(message.topic, message.payload, time.time())
            except Exception:  # a view must never die of one message
                log.exception("web monitor: cannot fold a message on %s", message.topic)

    # -- folding (also called directly by tests) --------------------------------------
    def fold(self, topic: str, payload: bytes, now: float) -> None:
        worker_id = self.topics.worker_of(topic)
        if worker_id is not None:
            self._fold_worker(worker_id, payload)
        elif self.topics.task_id_of_status(topic) is not None:
            self._fold_event(payload, now)
        elif self.topics.queue_of(topic) is not None:
            body = _decode(payload)
            if body is not None and isinstance(body.get("id"), str) and body.get("attempt", 1) == 1:
                with self._lock:
                    self._submitted.remember(body["id"], now)
            elif body is None:
                self.undecodable += 1

    def _fold_worker(self, worker_id: str, payload: bytes) -> None:
        state = _decode(payload) if payload else None
        with self._lock:
            if state is None:
                self._workers.pop(worker_id, None)
            else:
                self._workers[worker_id] = state
            self.version += 1

    def _fold_event(self, payload: bytes, now: float) -> None:
        event = _decode(payload)
        if event is None or not isinstance(event.get("id"), str) or not isinstance(event.get("state"), str):
            self.undecodable += 1
            return
        task_id, state, queue_name = event["id"], event["state"], str(event.get("queue") or "")
        final = bool(event.get("final")) or state in TERMINAL_STATES
        attempt: int = event["attempt"] if isinstance(event.get("attempt"), int) else 1
        with self._lock:
            last_end = self._ended.get(task_id)
            if last_end is not None and last_end >= attempt:  # a copy of its end, or of an event before it
                return
            self._ended.pop(task_id, None)  # a retry after the end (mqtt-tasks retry): a new run
            self._recent.appendleft(_compact(event))
            self.version += 1
            if state == STARTED:
                self._started.remember(task_id, float(event.get("ts") or now))
            if not final:
                ended = None
            else:
                self._ended.remember(task_id, attempt)
                submitted, started = self._submitted.pop(task_id, None), self._started.pop(task_id, None)
                latency = None if submitted is None else max(0.0, now - submitted)
                run_time = None if started is None else max(0.0, float(event.get("ts") or now) - started)
                ended = (latency, run_time)
                self.series.add(now, state == SUCCEEDED, latency)
                self._finals.append((now, queue_name, state == SUCCEEDED))
        if self.observer is not None:
            self.observer.on_event(state if state != FAILED or not final else "failed_final", queue_name)
            if ended is not None:
                self.observer.on_finished(queue_name, *ended)

    # -- reading ----------------------------------------------------------------------
    def workers(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(self._workers[k]) for k in sorted(self._workers)]

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._recent)[:limit]

    def queue_rates(self, now: float) -> dict[str, dict[str, int]]:
        """Per queue, the tasks that ended in the last minute: ``{"succeeded": n, "failed": m}``."""
        rates: dict[str, dict[str, int]] = {}
        with self._lock:
            while self._finals and self._finals[0][0] < now - RATE_WINDOW_S:
                self._finals.popleft()
            for _, queue_name, ok in self._finals:
                counts = rates.setdefault(queue_name, {"succeeded": 0, "failed": 0})
                counts["succeeded" if ok else "failed"] += 1
        return rates

    def snapshot(self, now: float, window: int = 120) -> dict[str, Any]:
        """Everything the dashboard's live stream sends: fleet, recent events, the series, queue rates."""
        with self._lock:
            points = self.series.points(now, window)
        return {"version": self.version, "connected": self.connected, "workers": self.workers(),
                "events": self.recent(), "series": points, "queues": self.queue_rates(now), "ts": now}


def _decode(payload: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _compact(event: dict[str, Any]) -> dict[str, Any]:
    keep = ("id", "state", "attempt", "worker", "task", "queue", "ts", "reason", "progress", "error", "final")
    return {k: event[k] for k in keep if event.get(k) is not None}
