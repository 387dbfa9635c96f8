"""The record the coordinator keeps for every workflow (chain, group, chord, saga), beside its tasks.

A workflow's steps are ordinary tasks with deterministic ids (``{workflow}.{index}``, a saga's
compensations ``{workflow}.{index}.undo``, a chord's callback ``{workflow}.callback``). A step may
itself be a chain, group or chord (``kind``), with steps of its own, one path segment further down
(``{workflow}.1.0``, ``{workflow}.1.callback``): one record holds the whole tree. The workflow
record says which steps exist, which were submitted and how each ended; it is written in the same
commit as the task records of the steps it submits, so a coordinator killed at any point never
submits a step twice and never forgets one (docs/workflows.md). The policy that moves it is
``mqtt_tasks.flow`` (pure).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..protocol.states import PENDING, RUNNING, WORKFLOW_TERMINAL_STATES


@dataclass
class WorkflowStep:
    """One step: the signature it runs (``sig``: task, args, kwargs, queue and options) and its
    outcome; or, with a ``kind``, a nested chain, group or chord with its own ``steps`` (and a
    chord's ``callback``), whose outcome is the nested workflow's."""

    id: str
    sig: dict[str, Any]
    kind: str | None = None         # None: a task; chain, group, chord: a nested workflow
    steps: list[WorkflowStep] = field(default_factory=list)
    callback: WorkflowStep | None = None
    state: str = PENDING            # pending, then the task's states, or skipped
    result: Any = None
    error: dict[str, Any] | None = None
    reason: str | None = None
    undo: dict[str, Any] | None = None  # a saga step's compensation signature
    undo_id: str | None = None
    undo_state: str | None = None   # None: nothing to undo (yet); pending; the compensation task's state
    undo_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _data(self, _STEP_VALUES)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkflowStep:
        return cls(**_known(data, _STEP_FIELDS))

    def walk(self) -> Iterator[WorkflowStep]:
        """This step, then every step nested in it (depth first, a chord's callback after its members)."""
        yield self
        for child in self.children():
            yield from child.walk()

    def children(self) -> list[WorkflowStep]:
        return self.steps + ([self.callback] if self.callback is not None else [])


@dataclass
class WorkflowRecord:
    """A workflow: its shape, its steps and how it ended."""

    id: str
    kind: str                       # chain, group, chord, saga
    steps: list[WorkflowStep] = field(default_factory=list)
    callback: WorkflowStep | None = None  # a chord's
    state: str = RUNNING
    reply_to: str | None = None
    correlation: str | None = None
    created: float = 0.0
    updated: float = 0.0
    result: Any = None
    error: dict[str, Any] | None = None
    reason: str | None = None
    failed_step: int | None = None  # the index of the step that failed a chain or a saga

    @property
    def terminal(self) -> bool:
        return self.state in WORKFLOW_TERMINAL_STATES

    def children(self) -> list[WorkflowStep]:
        """The top-level steps, and a chord's callback last."""
        return self.steps + ([self.callback] if self.callback is not None else [])

    def walk(self) -> Iterator[WorkflowStep]:
        """Every step, nested ones too, depth first."""
        for child in self.children():
            yield from child.walk()

    def to_dict(self) -> dict[str, Any]:
        return _data(self, _VALUES)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkflowRecord:
        return cls(**_known(data, _FIELDS))


def _data(node: WorkflowRecord | WorkflowStep, names: tuple[str, ...]) -> dict[str, Any]:
    """JSON-ready data: the fields that are not None (``from_dict`` gives the rest their defaults)
    and the steps' data. No copy of the values: the store encodes it at once. The whole record is
    written at every commit that changes it, so this is on each step's path (``dataclasses.asdict``
    deep-copies every value and took most of a chain step's coordinator time)."""
    data = {name: value for name in names if (value := getattr(node, name)) is not None}
    if node.steps:
        data["steps"] = [step.to_dict() for step in node.steps]
    if node.callback is not None:
        data["callback"] = node.callback.to_dict()
    return data


def _known(data: dict[str, Any], names: frozenset[str]) -> dict[str, Any]:
    known = {k: v for k, v in data.items() if k in names}
    known["steps"] = [WorkflowStep.from_dict(s) for s in known.get("steps") or []]
    callback = known.get("callback")
    known["callback"] = WorkflowStep.from_dict(callback) if callback else None
    return known


_STEP_FIELDS = frozenset(f.name for f in dataclasses.fields(WorkflowStep))
_FIELDS = frozenset(f.name for f in dataclasses.fields(WorkflowRecord))
_STEP_VALUES = tuple(f.name for f in dataclasses.fields(WorkflowStep) if f.name not in ("steps", "callback"))
_VALUES = tuple(f.name for f in dataclasses.fields(WorkflowRecord) if f.name not in ("steps", "callback"))
