"""``POST /api/tasks``: the request body, checked before anything is published (pure, no I/O).

Body: ``{"task": NAME, "args": [...], "kwargs": {...}, "queue": Q, "id": ID, "priority": 0-9,
"delay": SECONDS, "max_attempts": N, "timeout": SECONDS, "expires": SECONDS}``; only ``task`` is
required. Anything else in the body is refused: a typo must not pass silently as an unknown
field. Every refusal is a ``ConfigError`` whose text says which field and why (HTTP 400).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..app import TaskOptions, scheduling_fields
from ..errors import ConfigError
from ..protocol.states import PRIORITY_MAX, PRIORITY_MIN, TASK_NAME_PATTERN
from ..protocol.topics import DEFAULT_QUEUE, is_valid_id

FIELDS = ("task", "args", "kwargs", "queue", "id", "priority", "delay", "max_attempts", "timeout", "expires")


@dataclass(frozen=True)
class Submission:
    task: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: TaskOptions = field(default_factory=TaskOptions)
    task_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def parse_submission(body: Any) -> Submission:
    if not isinstance(body, dict):
        raise ConfigError(f"the body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown field(s) {', '.join(unknown)}: use {', '.join(FIELDS)}")
    task = body.get("task")
    if not isinstance(task, str) or not re.match(TASK_NAME_PATTERN, task):
        raise ConfigError(f"task: a task name is required ({TASK_NAME_PATTERN}), got {task!r}")
    args, kwargs = body.get("args", []), body.get("kwargs", {})
    if not isinstance(args, list):
        raise ConfigError(f"args: must be a JSON array, got {type(args).__name__}")
    if not isinstance(kwargs, dict):
        raise ConfigError(f"kwargs: must be a JSON object, got {type(kwargs).__name__}")
    queue, task_id = body.get("queue", DEFAULT_QUEUE), body.get("id")
    for name, value in (("queue", queue), ("id", task_id)):
        if value is not None and (not isinstance(value, str) or not is_valid_id(value)):
            raise ConfigError(f"{name}: 1-128 characters of A-Z a-z 0-9 _ . : -, got {value!r}")
    options = TaskOptions(queue=queue, timeout=_positive(body, "timeout"), expires=_positive(body, "expires"),
                          max_attempts=_integer(body, "max_attempts", 1, 1000))
    extra = scheduling_fields(delay=_positive(body, "delay"),
                              priority=_integer(body, "priority", PRIORITY_MIN, PRIORITY_MAX)) or {}
    return Submission(task, args, kwargs, options, task_id, extra)


def _positive(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name}: must be a positive number of seconds, got {value!r}")
    return float(value)


def _integer(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name}: must be an integer from {low} to {high}, got {value!r}")
    return value


def wait_seconds(text: str | None, limit: float) -> float | None:
    """``?wait=SECONDS`` (``?wait`` alone: ``limit``); None without it."""
    if text is None:
        return None
    if text == "":
        return limit
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"wait: must be a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"wait: must be a positive number of seconds, got {text!r}")
    return min(value, limit)
