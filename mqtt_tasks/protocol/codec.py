"""Bytes <-> messages. Every decode failure becomes one error type, ``DecodeError``.

JSON only: nothing in a payload can name a Python object, import a module or reach pickle.
"""

from __future__ import annotations

import functools
import json
import re
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import DecodeError, EncodeError, PayloadTooLargeError
from . import validate

if TYPE_CHECKING:  # pydantic is imported only where a model is asked for: a worker never needs it
    from pydantic import BaseModel, ValidationError

    from .messages import StatusEvent, Task, WorkerState

DEFAULT_MAX_PAYLOAD = 256 * 1024
"""The library's payload cap (bytes): below Mosquitto's ``max_packet_size`` in the shipped
mosquitto.conf (1 MiB) and amqtt's WebSocket cap, so the broker never drops our messages."""

M = TypeVar("M", bound="BaseModel")

_ID_IN_JSON = re.compile(rb'"id"\s*:\s*"([A-Za-z0-9_.:\-]{1,128})"')
_DUMPS = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def encode(obj: dict[str, Any] | BaseModel) -> bytes:
    """Compact UTF-8 JSON. ``None`` fields of models are left out."""
    if hasattr(obj, "model_dump_json"):
        return obj.model_dump_json(exclude_none=True).encode()
    try:
        return _DUMPS(obj).encode()
    except (TypeError, ValueError) as exc:
        raise EncodeError(f"not JSON-serialisable: {exc}") from exc


def check_size(payload: bytes, limit: int, topic: str = "") -> bytes:
    """The cap on what a component publishes: refused before it reaches the broker, which would
    drop it silently or make paho re-send it forever (docs/broker-facts.md)."""
    if len(payload) > limit:
        raise PayloadTooLargeError(len(payload), limit, topic=topic)
    return payload


def check_incoming(payload: bytes, max_payload: int, topic: str = "") -> None:
    """The cap on what a component reads: larger payloads are refused before parsing."""
    if len(payload) > max_payload:
        raise DecodeError(f"payload of {len(payload)} bytes exceeds the {max_payload}-byte cap",
                          payload=payload, topic=topic, task_id=guess_id(payload))


def decode(model: type[M], payload: bytes, *, topic: str = "", max_payload: int = DEFAULT_MAX_PAYLOAD) -> M:
    """Decode and validate one message; raise ``DecodeError`` with a one-line reason."""
    check_incoming(payload, max_payload, topic)
    try:
        return model.model_validate_json(payload)
    except ValueError as exc:  # pydantic's ValidationError is one; imported here, not per message (~2 us)
        from pydantic import ValidationError

        if not isinstance(exc, ValidationError):
            raise
        raise DecodeError(_describe(exc), payload=payload, topic=topic, task_id=guess_id(payload)) from exc


def decode_task_data(payload: bytes, *, topic: str = "", queue: str | None = None,
                     max_payload: int = DEFAULT_MAX_PAYLOAD) -> validate.TaskData:
    """The per-message path's task decoder: same verdicts as ``decode_task``, no pydantic."""
    check_incoming(payload, max_payload, topic)
    try:
        task = validate.decode_task(payload)
    except validate.Invalid as exc:
        raise DecodeError(str(exc), payload=payload, topic=topic, task_id=guess_id(payload)) from None
    if task.get("queue") is None and queue is not None:
        task["queue"] = queue
    return task


def decode_task(payload: bytes, *, topic: str = "", queue: str | None = None,
                max_payload: int = DEFAULT_MAX_PAYLOAD) -> Task:
    model: type[Task] = _messages().Task
    task = decode(model, payload, topic=topic, max_payload=max_payload)
    if task.queue is None and queue is not None:
        task.queue = queue
    return task


def decode_status(payload: bytes, *, topic: str = "", max_payload: int = DEFAULT_MAX_PAYLOAD) -> StatusEvent:
    model: type[StatusEvent] = _messages().StatusEvent
    return decode(model, payload, topic=topic, max_payload=max_payload)


def decode_worker_state(payload: bytes, *, topic: str = "",
                        max_payload: int = DEFAULT_MAX_PAYLOAD) -> WorkerState:
    model: type[WorkerState] = _messages().WorkerState
    return decode(model, payload, topic=topic, max_payload=max_payload)


def decode_json_object(payload: bytes, *, topic: str = "", max_payload: int = DEFAULT_MAX_PAYLOAD) -> dict[str, Any]:
    """A JSON object of any shape (control and query messages)."""
    check_incoming(payload, max_payload, topic)
    try:
        return validate.load_object(payload)
    except validate.Invalid as exc:
        raise DecodeError(str(exc), payload=payload, topic=topic) from None


@functools.cache
def _messages() -> ModuleType:
    """The pydantic models, imported on first use (a worker never needs them) and then kept: a
    relative import in a function costs a failed attribute lookup with its formatted
    AttributeError on every call (importlib's ``_initializing`` check), about 2 us a message."""
    from . import messages

    return messages


def guess_id(payload: bytes) -> str | None:
    """The task id of a payload that failed to decode, where one can be read safely."""
    match = _ID_IN_JSON.search(payload[:4096])
    return match.group(1).decode() if match else None




def _describe(exc: ValidationError) -> str:
    """One readable line out of a pydantic ValidationError."""
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "message"
        kind = err.get("type", "")
        if kind == "json_invalid":
            parts.append(f"not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})")
        elif kind == "model_type" or (kind.endswith("_type") and not err.get("loc")):
            parts.append("expected a JSON object")
        elif kind == "missing":
            parts.append(f"missing required field '{loc}'")
        else:
            parts.append(f"field '{loc}': {err.get('msg', kind)}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


__all__ = [
    "DEFAULT_MAX_PAYLOAD", "StatusEvent", "Task", "WorkerState", "check_size", "decode",
    "check_incoming", "decode_json_object", "decode_status", "decode_task", "decode_worker_state", "encode",
    "guess_id",
]
