"""The task list: which records a page holds, in which order, and the cursor that continues it.

Pure: no I/O, no clock. Every store answers ``list_tasks`` in this order and with this filter (the
SQL stores through their indexes, ``MemoryStore`` and the coordinator's outage answer through
``select``); the coordinator's ``tasks`` query parses its request here (``parse_query``).

Built on these facts:

- The order is ``updated`` descending, then ``id`` descending: ``updated`` ties are common (every
  record of a batch can carry the same time), and ``id`` is unique, so the order is total and a
  page boundary falls between two records, never inside a tie.
- Keyset paging, not OFFSET: a cursor is the (``updated``, ``id``) of a page's last record, and
  the next page holds the records strictly after it in that order. A page then costs the same at
  any depth (an index range from the cursor, ``LIMIT n``), and records recorded meanwhile, which
  sort ahead of the cursor, neither shift nor repeat what follows. A record *updated* meanwhile
  moves to the front: it shows on a new first page, not again further on.
- The cursor is opaque to clients: base64url of the JSON ``[updated, id]`` (a JSON number
  round-trips a Python float exactly), so it can be passed on in a URL or a shell unquoted.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..protocol.states import RECORD_STATES
from ..protocol.topics import check_name, is_valid_id

if TYPE_CHECKING:
    from .base import TaskRecord

MAX_LIMIT = 1000
"""Records in one answer of the ``tasks`` query at most (a larger ``limit`` is lowered to it)."""
DEFAULT_LIMIT = 100
QUERY_FIELDS = ("state", "queue", "task", "limit", "before")
"""The ``tasks`` query's own request fields (docs/protocol.md, "Task list")."""
ANSWER_FIELDS = ("ok", "tasks", "next", "store_error", "error", "invalid")
"""The fields of its answer besides ``correlation`` (docs/protocol.md, "Task list")."""
_BAD_CURSOR = "before: not a cursor from a previous answer's 'next'"

Key = tuple[float, str]
"""A record's place in the list: (updated, id)."""


@dataclass(frozen=True)
class TaskFilter:
    """What a page may hold: every given field must match, and it lies after ``before``."""

    state: str | None = None
    queue: str | None = None
    task: str | None = None
    before: Key | None = None

    def matches(self, record: TaskRecord) -> bool:
        return ((self.state is None or record.state == self.state)
                and (self.queue is None or record.queue == self.queue)
                and (self.task is None or record.task == self.task)
                and (self.before is None or key(record) < self.before))


@dataclass(frozen=True)
class TaskQuery:
    """A parsed ``tasks`` query: the filter and the page size."""

    filter: TaskFilter
    limit: int


def key(record: TaskRecord) -> Key:
    return (record.updated, record.id)


def select(records: Iterable[TaskRecord], where: TaskFilter, limit: int) -> list[TaskRecord]:
    """The first ``limit`` records that match, in list order (for stores that keep them in memory)."""
    return heapq.nlargest(limit, (r for r in records if where.matches(r)), key=key)


def encode_cursor(record: TaskRecord) -> str:
    raw = json.dumps([record.updated, record.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: object) -> Key:
    """The (updated, id) a cursor encodes; ``ValueError`` with a clear reason for anything else."""
    if not isinstance(cursor, str) or not 0 < len(cursor) <= 400:
        raise ValueError(_BAD_CURSOR)
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        raise ValueError(_BAD_CURSOR) from None
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], int | float)
            and not isinstance(value[0], bool) and math.isfinite(value[0]) and isinstance(value[1], str)
            and is_valid_id(value[1])):
        raise ValueError(_BAD_CURSOR)
    return (float(value[0]), value[1])


def page(records: list[TaskRecord], limit: int) -> tuple[list[TaskRecord], str | None]:
    """Given up to ``limit + 1`` records in list order: the page, and the cursor of the next one
    (None when there is no record after this page)."""
    if len(records) <= limit:
        return records, None
    shown = records[:limit]
    return shown, encode_cursor(shown[-1])


def parse_query(request: dict[str, Any]) -> TaskQuery:
    """The ``tasks`` query's fields, checked; ``ValueError`` naming the first bad one. Absent or
    null fields are not filters; a ``limit`` over ``MAX_LIMIT`` is lowered to it."""
    state, queue, task = request.get("state"), request.get("queue"), request.get("task")
    if state is not None and state not in RECORD_STATES:
        raise ValueError(f"state: one of {', '.join(RECORD_STATES)}, got {state!r}")
    if queue is not None:
        check_name("queue", queue)
    if task is not None and not (isinstance(task, str) and 0 < len(task) <= 200):
        raise ValueError(f"task: a task name (1-200 characters), got {task!r}")
    limit = request.get("limit")
    if limit is None:
        limit = DEFAULT_LIMIT
    elif isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit: an integer 1-{MAX_LIMIT}, got {limit!r}")
    before = request.get("before")
    return TaskQuery(TaskFilter(state, queue, task, None if before is None else decode_cursor(before)),
                     min(limit, MAX_LIMIT))
