"""One builder per outgoing wire message, and the reply guard every component applies.

Pure and dependency-free (no pydantic: a worker on a small device builds its events here too).
Each builder returns the JSON object as a plain dict with ``None`` fields left out, ready for
``codec.encode``; the models in ``messages.py`` describe the same objects for readers.

Built here and nowhere else: status events (``P/status/{id}`` and reply topics), worker states
(``P/workers/{id}``), error reports (``P/errors``), dead letters (``P/dead/{queue}``), commands to a
worker (``P/control/{id}``), the coordinator's presence (``P/coordinator``) and its receipts
(a task's ``receipt_to``).
"""

from __future__ import annotations

from typing import Any

from .states import SUCCEEDED
from .topics import Topics

PAYLOAD_EXCERPT = 512
"""Bytes of a rejected payload quoted in an error report."""


def _compact(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def status_event(task_id: str, state: str, attempt: int, ts: float, *, worker: str | None = None,
                 task: str | None = None, queue: str | None = None, correlation: str | None = None,
                 **fields: Any) -> dict[str, Any]:
    """A status event. ``None`` fields are left out, except ``result`` on ``succeeded`` (a task
    that returned ``None`` still reports ``"result": null``)."""
    event = _compact({"id": task_id, "state": state, "attempt": attempt, "worker": worker, "ts": ts,
                      "task": task, "queue": queue, "correlation": correlation, **fields})
    if state == SUCCEEDED:
        event.setdefault("result", fields.get("result"))
    return event


def error_info(type_name: str, message: str, traceback: str | None = None) -> dict[str, Any]:
    """The ``error`` of a failed event: the exception's class name, message and traceback."""
    return _compact({"type": type_name, "message": message, "traceback": traceback})


def worker_state(worker: str, state: str, ts: float, **fields: Any) -> dict[str, Any]:
    """A worker's retained state: its heartbeat, or its Last Will (``offline``)."""
    return _compact({"worker": worker, "state": state, "ts": ts, **fields})


def error_report(*, component: str, reason: str, ts: float, topic: str | None = None,
                 payload: bytes | None = None, source: str | None = None,
                 task_id: str | None = None) -> dict[str, Any]:
    """What a component rejected, where, and why; the payload quoted (truncated) as text."""
    return _compact({"component": component, "source": source, "topic": topic, "reason": reason, "id": task_id,
                     "ts": ts, "payload": excerpt(payload) if payload is not None else None,
                     "size": len(payload) if payload is not None else None})


def dead_letter(task_id: str, *, body: dict[str, Any] | None, queue: str, reason: str | None, failures: int,
                attempts: list[dict[str, Any]], error: dict[str, Any] | None, ts: float) -> dict[str, Any]:
    """A dead task as published on ``P/dead/{queue}``: the task, its attempts and the reason."""
    return _compact({"id": task_id, "task": body, "queue": queue, "reason": reason, "failures": failures,
                     "attempts": attempts, "error": error, "ts": ts})


def cancel_command(task_id: str, attempt: int | None, reason: str, *, cancelled: bool = False) -> dict[str, Any]:
    """Tell one worker (on ``P/control/{worker}``) to stop an attempt it holds. ``cancelled``: the
    task itself was cancelled (``P/cancel/{id}``), not just this attempt superseded."""
    return _compact({"op": "cancel", "id": task_id, "attempt": attempt, "reason": reason,
                     "cancelled": True if cancelled else None})


def cancel_request(*, reason: str | None = None, reply_to: str | None = None,
                   correlation: str | None = None) -> dict[str, Any]:
    """A request to cancel a task, on ``P/cancel/{task_id}`` (every field optional: ``{}`` will do)."""
    return _compact({"reason": reason, "reply_to": reply_to, "correlation": correlation})


def cancel_answer(task_id: str, ok: bool, state: str | None, *, error: str | None = None,
                  correlation: str | None = None) -> dict[str, Any]:
    """The coordinator's answer to a cancel request that named a ``reply_to``."""
    return _compact({"id": task_id, "ok": ok, "state": state, "error": error, "correlation": correlation})


def progress_info(fraction: float | None, message: str | None) -> dict[str, Any]:
    """The ``progress`` of a ``progress`` status event: a fraction in [0, 1] and/or a message."""
    return _compact({"fraction": fraction, "message": message})


def presence(state: str, ts: float | None, client: str, pid: int | None,
             resumed: bool | None = None, *, name: str | None = None, epoch: int | None = None) -> dict[str, Any]:
    """The coordinator's retained presence on ``P/coordinator``. Its Last Will (``offline``) is
    fixed when it connects, long before the broker sends it: built with neither ``ts`` nor ``pid``.
    ``resumed`` (on ``online``): whether the broker still had the coordinator's session, so the
    tasks queued for it while it was away are coming; false tells producers to re-send theirs.
    ``name`` and ``epoch``: which of several coordinators on the prefix leads, and its leadership
    epoch (they share ``client``, the MQTT session)."""
    return _compact({"state": state, "ts": ts, "client": client, "pid": pid, "resumed": resumed, "name": name,
                     "epoch": epoch})


def receipt(ids: list[str], ts: float, client: str) -> dict[str, Any]:
    """The coordinator recorded (committed) these tasks: sent to each task's ``receipt_to``, one
    message per topic per commit."""
    return {"ids": ids, "ts": ts, "client": client}


def excerpt(payload: bytes, limit: int = PAYLOAD_EXCERPT) -> str:
    """A printable, truncated view of a rejected payload for an error report."""
    text = payload[:limit].decode("utf-8", errors="replace")
    return text + ("..." if len(payload) > limit else "")


def reply_refusal(topics: Topics, topic: str) -> str | None:
    """Why ``topic`` may not receive a task's reply, or None when it may.

    A reply on one of the prefix's own topics would be read as a task, a status event, a
    heartbeat or a dead letter (docs/security.md): a final event published to ``P/tasks/q`` decodes
    as a runnable task. Only ``P/replies/...`` is allowed under the prefix. Every component that
    publishes to a topic a task names (worker, coordinator) asks this first.
    """
    if topic.startswith("$") or "+" in topic or "#" in topic:
        return f"refusing to reply on {topic!r}: not a plain topic name"
    if (topic == topics.prefix or topic.startswith(topics.prefix + "/")) and not topic.startswith(topics.replies_root):
        return f"refusing to reply on protocol topic {topic!r}"
    return None
