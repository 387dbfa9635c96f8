"""Queries: the coordinator's answers on the query topic, and the client side that asks them.

Built on these facts:

- A query is a JSON object on ``P/rpc/query`` (or, as every op, ``P/rpc/coordinator``) with an
  ``op`` (``status``, ``tasks``, ``stats``, ``result``), a ``correlation`` and a reply topic (its
  ``reply_to``, else its MQTT 5 Response Topic). An op on an rpc topic that does not take it (a
  ``purge`` on ``P/rpc/query``) is answered ``ok: false`` naming the topic to use, never executed
  (``protocol.rpc``). The answer goes to that topic with the correlation echoed (and the MQTT 5
  Correlation Data); the reply guard of ``protocol.events`` applies, as to every reply.
- Answers are read from the live cache and the store on the loop's thread, like everything else:
  a query sees every record of the batches before it. They state no decision, so they are
  published even while the store cannot commit (``outage``): ``status`` and ``result`` answer
  from memory and the store's reads as usual; ``tasks`` lists only the live tasks, and ``stats``
  has no ``counts``, each with a ``store_error`` saying why. ``result`` answers only a finished task,
  with its final event; otherwise it stays silent and the asker keeps waiting for the event.
- An answer over the payload cap is replaced by a short refusal, never dropped; a ``tasks`` page
  is cut short to fit instead, its ``next`` continuing after the last summary it holds.
- ``tasks`` pages with a keyset cursor (``store.listing``): filters by state, queue and task name
  that the store answers from an index, and ``next``, the cursor of the following page
  (``query_task_page`` asks for one).
- The client side (``query_status``, ``query_tasks``, ``query_stats``) is one short-lived
  connection per call that sends each op on the narrowest rpc topic that takes it, having
  subscribed to its own reply topic first: ``P/replies/{username}/{unique}`` when the settings
  carry a username (so a role's ACL can name it), else ``P/replies/{client}`` (``protocol.rpc``).
  A request the broker refuses (an MQTT 5 PUBACK "Not authorized") fails at once.
"""

from __future__ import annotations

import queue
import time
import uuid
from typing import TYPE_CHECKING, Any

from ..errors import (
    ConfigError,
    CoordinatorTimeoutError,
    DecodeError,
    MqttTasksError,
    NotAuthorizedError,
    PayloadTooLargeError,
    StoreError,
    TaskNotFoundError,
)
from ..protocol import codec, events, rpc
from ..protocol.topics import Topics
from ..store import listing
from ..transport import Connection, Message
from . import routing
from .effects import final_event
from .workflows import encode_event, workflow_view

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..config import Settings
    from ..store.base import TaskRecord
    from .backlog import Backlog
    from .effects import Effects
    from .fleet import Fleet
    from .records import Records
    from .workflows import Workflows

OPS = ("status", "tasks", "stats", "result", "retry", "purge")


STATS_WORKERS = 1000
"""Workers listed by name in a ``stats`` answer at most (``workers_total`` counts them all)."""


class Queries:
    """Answers the queries that arrive on the query topic."""

    def __init__(self, settings: Settings, topics: Topics, records: Records, fleet: Fleet, backlog: Backlog,
                 effects: Effects, stats: dict[str, int], clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._max_payload = settings.max_payload
        self._topics = topics
        self._records = records
        self._fleet = fleet
        self._backlog = backlog
        self._effects = effects
        self._stats = stats
        self.ops: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}  # more ops: admin.py, schedules.py
        self.workflows: Workflows | None = None  # a workflow id answers status and result too

    def on_rpc(self, message: Message) -> None:
        request = codec.decode_json_object(message.payload, topic=message.topic, max_payload=self._max_payload)
        reply_to = request.get("reply_to") or message.response_topic
        if not isinstance(reply_to, str) or not reply_to:
            raise DecodeError("query without a valid reply_to", payload=message.payload, topic=message.topic)
        refusal = events.reply_refusal(self._topics, reply_to)
        if refusal is not None:
            raise DecodeError(f"query with an invalid reply_to: {refusal}", payload=message.payload,
                              topic=message.topic)
        refused = rpc.refusal(self._topics, message.topic, request.get("op"))
        if refused is not None:  # e.g. purge on the read-only topic: answered, never executed
            answer: dict[str, Any] = {"ok": False, "error": refused}
        elif request.get("op") == "result":
            self._result(str(request.get("id", "")), reply_to, message.correlation_data)
            return
        else:
            answer = self.answer(request)
        answer["correlation"] = request.get("correlation")
        try:
            payload = codec.check_size(codec.encode(answer), self._max_payload, reply_to)
        except PayloadTooLargeError as exc:
            payload = codec.encode({"ok": False, "error": str(exc), "correlation": request.get("correlation")})
        self._effects.send_now(reply_to, payload, correlation_data=message.correlation_data)

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if isinstance(op, str) and op in self.ops:
            return self.ops[op](request)
        if op == "status":
            record = self._records.get(str(request.get("id", "")))
            if record is not None:
                view = self._with_waiting(record_view(record), record)
                if (waiting := self._backlog.gate.waiting(record.id)) is not None:
                    view["rate_limited"] = waiting  # parked: its bucket is at its limit
                return {"ok": True, "task": view}
            workflow = self.workflows.get(str(request.get("id", ""))) if self.workflows is not None else None
            if workflow is not None:
                return {"ok": True, "task": workflow_view(workflow)}
            return {"ok": False, "error": f"no record of task {request.get('id')!r}"}
        if op == "tasks":
            return self._tasks(request)
        if op == "stats":
            try:
                counts: dict[str, Any] = {"counts": self._records.store.counts()}
            except StoreError as exc:
                counts = {"store_error": str(exc)}
            return {"ok": True, **self.snapshot(), **counts}
        if isinstance(op, str) and op in self.ops:
            return self.ops[op](request)
        return {"ok": False, "error": f"unknown op {op!r}: use {', '.join(OPS[:-1])} or {OPS[-1]}"}

    def _result(self, task_id: str, reply_to: str, correlation_data: bytes | None) -> None:
        """The final event of a finished task or workflow, to ``reply_to``; nothing while it runs."""
        record = self._records.get(task_id)
        if record is not None:
            if record.terminal:
                self._effects.send_now(reply_to, codec.encode(final_event(record)), correlation_data=correlation_data)
            return
        workflow = self.workflows.get(task_id) if self.workflows is not None else None
        if workflow is not None and workflow.terminal:
            payload = encode_event(workflow, workflow.state, workflow.reason or workflow.state, workflow.updated, True,
                                   self._max_payload)
            self._effects.send_now(reply_to, payload, correlation_data=correlation_data)

    def _with_waiting(self, view: dict[str, Any], record: TaskRecord) -> dict[str, Any]:
        """A routed task in the backlog says why it waits (``routing.waiting_reason``)."""
        reason = routing.waiting_reason(record, self._fleet.live(self._clock()))
        return {**view, "waiting": reason} if reason else view

    def _tasks(self, request: dict[str, Any]) -> dict[str, Any]:
        """One page from the store, and the cursor of the next (``listing``); while the store cannot
        commit, a page of the live tasks from memory, saying so. A bad field: ``invalid``, and why."""
        try:
            query = listing.parse_query(request)
        except ValueError as exc:
            return {"ok": False, "invalid": True, "error": str(exc)}
        where, extra = query.filter, {}
        try:  # one more than the page: is there a next one?
            records = self._records.store.list_tasks(where.state, query.limit + 1, queue=where.queue, task=where.task,
                                                     before=where.before)  # commits first: sees this batch too
        except StoreError as exc:
            records = listing.select(self._records.live.values(), where, query.limit + 1)
            extra = {"store_error": f"{exc}: only the live tasks, from memory"}
        summaries, cursor = self._fit(*listing.page(records, query.limit))
        return {"ok": True, "tasks": summaries, "next": cursor, **extra}

    def _fit(self, shown: list[TaskRecord], cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """The page's summaries, cut short to fit the payload cap (1,000 summaries are about 280 KB,
        over the default 256 KiB), with ``next`` continuing right after the last one kept."""
        summaries = [record_summary(r) for r in shown]
        budget = self._max_payload - min(1024, self._max_payload // 4)  # for next, correlation, store_error
        while len(summaries) > 1 and (size := len(codec.encode({"tasks": summaries}))) > budget:
            keep = max(1, min(len(summaries) - 1, len(summaries) * budget // size))
            summaries, cursor = summaries[:keep], listing.encode_cursor(shown[keep - 1])
        return summaries, cursor

    def snapshot(self) -> dict[str, Any]:
        """The counters, live and backlog sizes, and the view of the workers (no store access): the
        first ``STATS_WORKERS`` of them by name, with totals over all, so that a fleet of 10,000 (about
        45 bytes each) still fits the payload cap."""
        views = list(self._fleet.views.values())
        shown = views if len(views) <= STATS_WORKERS else sorted(views, key=lambda w: w.worker)[:STATS_WORKERS]
        states: dict[str, int] = {}
        for w in views:
            states[w.state] = states.get(w.state, 0) + 1
        return {"stats": dict(self._stats), "live": len(self._records.live), "backlog": len(self._backlog),
                "backlog_by_queue": self._backlog.by_queue(),
                "rate_limited": self._backlog.gate.parked,
                "workers": {w.worker: {"state": w.state, "free": w.free, "labels": sorted(w.labels)} for w in shown},
                "workers_total": len(views), "workers_by_state": states, "free_slots": sum(w.free for w in views)}


# -- views of a record -------------------------------------------------------------------------
def record_summary(record: TaskRecord) -> dict[str, Any]:
    return {"id": record.id, "state": record.state, "task": record.task, "queue": record.queue,
            "attempt": record.attempt, "failures": record.failures, "worker": record.worker,
            "created": record.created, "updated": record.updated, "reason": record.reason,
            "duplicates": record.duplicates, "losses": record.losses, "kills": record.kills}


def record_view(record: TaskRecord) -> dict[str, Any]:
    view = record_summary(record)
    view.update(history=record.history, result=record.result, error=record.error,
                max_attempts=record.max_attempts, winner=record.winner, expires_at=record.expires_at,
                progress=record.progress, step_timeout=record.step_timeout, rate_limit=record.rate_limit,
                rate_key=record.rate_key)
    return view


# -- the client side ---------------------------------------------------------------------------
def _ask(settings: Settings, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    topic = rpc.topic_for(Topics(settings.prefix), str(request["op"]))
    answer = exchange(settings, topic, lambda reply_to, correlation: {**request, "reply_to": reply_to,
                                                                       "correlation": correlation},
                      timeout, properties=True)
    if answer is None:
        raise CoordinatorTimeoutError(f"no coordinator answered on {topic} within {timeout}s")
    return answer


def exchange(settings: Settings, topic: str, request: Callable[[str, str], dict[str, Any]], timeout: float, *,
             kind: str = "q", properties: bool = False) -> dict[str, Any] | None:
    """Publish ``request(reply_topic, correlation)`` on ``topic`` from a short-lived client and wait
    for the answer that carries the correlation on its own reply topic: the answer, or None after
    ``timeout``. With ``properties``, the MQTT 5 Response Topic and Correlation Data say it too.
    The client id and reply topic: ``rpc.reply_address`` (under the user's subtree with a username).
    ``NotAuthorizedError`` at once when the broker refuses the request (MQTT 5: its ACL)."""
    client_id, reply_topic = rpc.reply_address(Topics(settings.prefix), settings.username, kind,
                                               uuid.uuid4().hex[:12])
    answers: queue.SimpleQueue[Message | str] = queue.SimpleQueue()
    conn = Connection(settings, client_id, on_message=answers.put,
                      on_rejected=lambda _mid, reason: answers.put(reason))
    conn.subscribe(reply_topic)
    conn.connect(timeout)
    correlation = uuid.uuid4().hex
    extra: dict[str, Any] = {"response_topic": reply_topic, "correlation_data": correlation.encode()} if properties \
        else {}
    try:
        conn.publish(topic, codec.encode(request(reply_topic, correlation)), **extra)
        return _await_answer(answers, correlation, time.monotonic() + timeout, topic, settings.username)
    finally:
        conn.close(1.0)


def _await_answer(answers: queue.SimpleQueue[Message | str], correlation: str, deadline: float, topic: str,
                  user: str | None) -> dict[str, Any] | None:
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = answers.get(timeout=left)
        except queue.Empty:
            break
        if isinstance(message, str):  # the broker refused our one publish
            who = f"user {user!r}" if user else "this client"
            raise NotAuthorizedError(f"the broker refused the request on {topic} ({message}): the ACL of {who} "
                                     "does not allow it (docs/security.md)")
        try:
            answer = codec.decode_json_object(message.payload, topic=message.topic)
        except DecodeError:
            continue
        if answer.get("correlation") == correlation:
            return answer
    return None


def query_status(settings: Settings, task_id: str, timeout: float = 5.0) -> dict[str, Any]:
    """A task's record (state, attempts, history, result) from a running coordinator."""
    answer = _ask(settings, {"op": "status", "id": task_id}, timeout)
    if not answer.get("ok"):
        raise TaskNotFoundError(str(answer.get("error") or f"no record of task {task_id!r}"))
    task: dict[str, Any] = answer["task"]
    return task


def query_tasks(settings: Settings, state: str | None = None, limit: int = 100, timeout: float = 5.0, *,
                queue: str | None = None, task: str | None = None, before: str | None = None) -> list[dict[str, Any]]:
    """Task summaries, most recently updated first, of the given state, queue and task name if given:
    one page (``query_task_page``) of at most 1,000."""
    tasks: list[dict[str, Any]] = query_task_page(settings, state, limit, timeout, queue=queue, task=task,
                                                  before=before)["tasks"]
    return tasks


def query_task_page(settings: Settings, state: str | None = None, limit: int = 100, timeout: float = 5.0, *,
                    queue: str | None = None, task: str | None = None,
                    before: str | None = None) -> dict[str, Any]:
    """``{"tasks": [summaries], "next": cursor or None}``: up to ``limit`` (at most 1,000) task
    summaries, most recently updated first, filtered as given, after the cursor ``before`` (the
    ``next`` of the previous page). A bad value raises ``ConfigError`` with the coordinator's reason."""
    request = {"op": "tasks", "state": state, "queue": queue, "task": task, "limit": limit, "before": before}
    answer = _ask(settings, {k: v for k, v in request.items() if v is not None}, timeout)
    if not answer.get("ok"):
        raise (ConfigError if answer.get("invalid") else MqttTasksError)(str(answer.get("error")))
    return {"tasks": answer["tasks"], "next": answer.get("next")}


def query_stats(settings: Settings, timeout: float = 5.0) -> dict[str, Any]:
    """The coordinator's counters, live and backlog sizes, and its view of the workers."""
    return _ask(settings, {"op": "stats"}, timeout)
