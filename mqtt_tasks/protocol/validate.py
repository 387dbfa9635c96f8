"""A dependency-free validator of tasks and status events for the per-message path.

The pydantic models in ``messages.py`` are the reference (JSON Schema, docs, the coordinator);
this module accepts and rejects exactly the same payloads (a property test holds them to it)
without importing pydantic, which keeps a worker on a small device near paho's own footprint
and the per-message cost low. Decoded messages are ``TaskData`` / ``EventData``: the JSON
object itself, with attribute access to the contract's fields; unknown fields are kept.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from . import labels
from .rates import RATE_KEY_MAX, rate_limit_problem
from .states import PRIORITY_MAX, PRIORITY_MIN, STATUS_STATES, TASK_NAME_PATTERN
from .topics import ID_PATTERN

_ID = re.compile(ID_PATTERN.replace("$", r"\Z"))
_TASK_NAME = re.compile(TASK_NAME_PATTERN.replace("$", r"\Z"))

STATES = frozenset(STATUS_STATES)


class Invalid(ValueError):
    """One readable reason why a payload is not a valid message."""


def load_object(payload: bytes) -> dict[str, Any]:
    try:
        value = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise Invalid(f"not valid UTF-8 JSON ({exc.reason} at byte {exc.start})") from None
    except ValueError as exc:
        raise Invalid(f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise Invalid("expected a JSON object")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _check_str(obj: dict[str, Any], name: str, pattern: re.Pattern[str] | None = None, *,
               required: bool = False, max_len: int | None = None, min_len: int = 0) -> None:
    if name not in obj:
        if required:
            raise Invalid(f"missing required field '{name}'")
        return
    value = obj[name]
    if value is None and not required:
        return
    if not isinstance(value, str):
        raise Invalid(f"field '{name}': Input should be a valid string")
    if pattern is not None and not pattern.match(value):
        raise Invalid(f"field '{name}': String should match pattern '{pattern.pattern}'")
    if len(value) < min_len or (max_len is not None and len(value) > max_len):
        raise Invalid(f"field '{name}': length must be between {min_len} and {max_len}")


def _check_int(obj: dict[str, Any], name: str, lo: int, hi: int | None = None, *, nullable: bool = True) -> None:
    if name not in obj or (obj[name] is None and nullable):
        return
    value = obj[name]
    if not _is_int(value):
        raise Invalid(f"field '{name}': Input should be a valid integer")
    if value < lo or (hi is not None and value > hi):
        raise Invalid(f"field '{name}': must be between {lo} and {hi}")


def _check_number(obj: dict[str, Any], name: str, *, positive: bool = False) -> None:
    if name not in obj or obj[name] is None:
        return
    value = obj[name]
    if not _is_number(value):
        raise Invalid(f"field '{name}': Input should be a finite number")
    if positive and value <= 0:
        raise Invalid(f"field '{name}': Input should be greater than 0")


def lenient(name: str, value: Any) -> Any:
    """A field added after v1 that only informs or orders (``priority``, ``alone``, ``schedule``,
    ``scheduled_for``, ``workflow``, ``traceparent``, ``tracestate``): a value of another type is
    read as absent, and the task is not refused, so a producer that used one of these names for a field of its own
    before keeps working. The models read them the same way (``messages.Task``)."""
    if value is None:
        return None
    if name == "priority":
        ok = _is_int(value) and PRIORITY_MIN <= value <= PRIORITY_MAX
    elif name == "alone":
        ok = isinstance(value, bool)
    elif name in ("schedule", "workflow", "traceparent", "tracestate"):
        ok = isinstance(value, str)
    else:
        ok = _is_number(value)
    return value if ok else None


class TaskData(dict[str, Any]):
    """A validated task: the JSON object, with the contract's fields as attributes."""

    __slots__ = ()

    id = property(lambda self: self["id"])
    task = property(lambda self: self["task"])
    args = property(lambda self: self.get("args") or [])
    kwargs = property(lambda self: self.get("kwargs") or {})
    attempt = property(lambda self: self.get("attempt") or 1)
    max_attempts = property(lambda self: self.get("max_attempts"))
    timeout = property(lambda self: self.get("timeout"))
    reply_to = property(lambda self: self.get("reply_to"))
    correlation = property(lambda self: self.get("correlation"))
    expires_at = property(lambda self: self.get("expires_at"))
    queue = property(lambda self: self.get("queue"))
    alone = property(lambda self: lenient("alone", self.get("alone")))  # true: run it alone (a suspect)
    receipt_to = property(lambda self: self.get("receipt_to"))
    not_before = property(lambda self: self.get("not_before"))
    priority = property(lambda self: lenient("priority", self.get("priority")))
    schedule = property(lambda self: lenient("schedule", self.get("schedule")))
    scheduled_for = property(lambda self: lenient("scheduled_for", self.get("scheduled_for")))
    step_timeout = property(lambda self: self.get("step_timeout"))
    workflow = property(lambda self: lenient("workflow", self.get("workflow")))
    traceparent = property(lambda self: lenient("traceparent", self.get("traceparent")))  # tracing.py
    tracestate = property(lambda self: lenient("tracestate", self.get("tracestate")))
    rate_limit = property(lambda self: self.get("rate_limit"))
    rate_key = property(lambda self: self.get("rate_key"))
    requires = property(lambda self: self.get("requires"))


def task(obj: dict[str, Any]) -> TaskData:
    """Validate a decoded JSON object as a task (same rules as ``messages.Task``)."""
    _check_str(obj, "id", _ID, required=True)
    _check_str(obj, "task", _TASK_NAME, required=True)
    if "args" in obj and not isinstance(obj["args"], list):
        raise Invalid("field 'args': Input should be a valid list")
    if "kwargs" in obj and not isinstance(obj["kwargs"], dict):
        raise Invalid("field 'kwargs': Input should be a valid dictionary")
    _check_int(obj, "attempt", 1, nullable=False)
    _check_int(obj, "max_attempts", 1, 1000)
    _check_number(obj, "timeout", positive=True)
    for name in ("reply_to", "receipt_to"):
        _check_str(obj, name, max_len=512, min_len=1)
        topic = obj.get(name)
        if topic is not None and ("+" in topic or "#" in topic or topic.startswith("$")):
            raise Invalid(f"field '{name}': must be a plain topic name (no wildcards, not $...)")
    _check_str(obj, "correlation", max_len=1024)
    _check_number(obj, "expires_at")
    _check_str(obj, "queue", _ID)
    _check_number(obj, "not_before")
    _check_number(obj, "step_timeout", positive=True)
    _check_rate(obj)
    if obj.get("requires") is not None and (reason := labels.problem(obj["requires"])) is not None:
        raise Invalid(f"field 'requires': {reason}")
    return TaskData(obj)


def _check_rate(obj: dict[str, Any]) -> None:
    """``rate_limit`` (its grammar: ``rates.py``) and ``rate_key``, which needs a limit."""
    if obj.get("rate_limit") is not None and (problem := rate_limit_problem(obj["rate_limit"])) is not None:
        raise Invalid(f"field 'rate_limit': {problem}")
    _check_str(obj, "rate_key", max_len=RATE_KEY_MAX, min_len=1)
    if obj.get("rate_key") is not None and obj.get("rate_limit") is None:
        raise Invalid("field 'rate_key': given without a rate_limit")


def decode_task(payload: bytes) -> TaskData:
    return task(load_object(payload))
