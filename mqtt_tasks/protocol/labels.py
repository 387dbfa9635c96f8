"""Capability labels: what a worker declares (``--label gpu``) and a task ``requires``. Pure.

- A label is 1-64 characters of ``A-Z a-z 0-9 _ . : -`` (one topic level, no ``,``); a worker
  declares at most ``MAX_LABELS``; a task requires at most ``MAX_REQUIRED`` of them, all of which
  the worker that runs it must have (docs/routing.md).
- With a coordinator, a task that requires labels is published on ``P/tasks/{queue}`` like any
  other: a worker that lacks a label hands it to the coordinator, whose backlog keeps one *lane*
  per (queue, required labels) so a task nobody can run waits without holding up the others.
- Without one, the topic convention: ``P/routed/{queue}/{labels}``, the required labels sorted and
  joined by ``,``; a worker subscribes (shared, in its group) the topic of every non-empty
  combination of up to ``MAX_REQUIRED`` of its labels, so exactly the workers that have them all
  share each such topic.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from typing import Any

from ..errors import ConfigError

LABEL_PATTERN = r"^[A-Za-z0-9_.:\-]{1,64}$"
_LABEL = re.compile(LABEL_PATTERN.replace("$", r"\Z"))
MAX_LABELS = 8
"""Labels one worker may declare (it subscribes up to 92 routed topics per queue)."""
MAX_REQUIRED = 3
"""Labels one task may require."""
LANE_SEPARATOR = "/"
"""Between the queue and the labels in a lane's name (never in a queue name)."""


def is_label(value: Any) -> bool:
    return isinstance(value, str) and _LABEL.match(value) is not None


def problem(value: Any, *, most: int = MAX_REQUIRED) -> str | None:
    """Why ``value`` is not a list of labels (None when it is one): a JSON array of 0-``most``
    distinct labels."""
    if not isinstance(value, list):
        return "Input should be a valid list of labels"
    if len(value) > most:
        return f"at most {most} labels"
    for label in value:
        if not is_label(label):
            return f"label {label!r} should match pattern '{LABEL_PATTERN}'"
    if len(set(value)) != len(value):
        return "labels must be distinct"
    return None


def check_labels(labels: Iterable[str], *, most: int = MAX_LABELS, kind: str = "labels") -> tuple[str, ...]:
    """Labels checked, sorted and deduplicated; ``ConfigError`` (a ``ValueError``) naming the problem."""
    if isinstance(labels, str):
        labels = [labels]
    unique = sorted(set(labels))
    reason = problem(unique, most=most)
    if reason is not None:
        raise ConfigError(f"invalid {kind}: {reason}")
    return tuple(unique)


def required(body: dict[str, Any] | None) -> frozenset[str]:
    """The labels a task (its JSON object) requires; a malformed field was refused on intake."""
    value = (body or {}).get("requires")
    return frozenset(value) if isinstance(value, list) else frozenset()


def missing(requires: Iterable[str], labels: Iterable[str]) -> list[str]:
    """The required labels a worker with ``labels`` lacks, sorted (empty: it may run the task)."""
    return sorted(set(requires) - set(labels))


def lane(queue: str, requires: Iterable[str]) -> str:
    """A backlog lane: the queue alone, or the queue and its sorted required labels."""
    labels = sorted(requires)
    return queue if not labels else f"{queue}{LANE_SEPARATOR}{','.join(labels)}"


def parse_lane(name: str) -> tuple[str, frozenset[str]]:
    queue, _, labels = name.partition(LANE_SEPARATOR)
    return queue, frozenset(labels.split(",")) if labels else frozenset()


def routed_level(requires: Iterable[str]) -> str:
    """The last level of a routed topic: the sorted labels joined by ``,``."""
    return ",".join(sorted(requires))


def combinations(labels: Iterable[str], most: int = MAX_REQUIRED) -> list[str]:
    """The routed-topic levels a worker with ``labels`` subscribes: every non-empty combination of
    up to ``most`` of them."""
    ordered = sorted(set(labels))
    return [",".join(combo) for size in range(1, min(most, len(ordered)) + 1)
            for combo in itertools.combinations(ordered, size)]


def describe(labels: Iterable[str]) -> str:
    names = sorted(labels)
    return ", ".join(names) if names else "no labels"
