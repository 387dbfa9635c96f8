"""Workflows in Python: signatures, ``chain``, ``group``, ``chord``, ``saga`` (docs/workflows.md).

::

    chain(add.s(2, 2), add.s(4), mul.s(10)).submit().result()       # ((2+2)+4)*10 = 80
    group(add.s(i, i) for i in range(10)).submit().result()          # [0, 2, 4, ...]
    chord(group(add.s(i, i) for i in range(10)), total.s()).submit()  # total([0, 2, 4, ...])
    chain(add.s(1, 1), group(add.s(1), add.s(2)), total.s()).submit()  # total([3, 4]) = 7
    saga(step(charge.s("order-1", 30), compensate=refund.s()),
         step(reserve.s("order-1"), compensate=release.s())).submit()

A workflow is one message on ``P/workflows`` (``to_message``; protocol.md, "Workflow"), which the
coordinator records and runs: it must be running. ``submit`` returns a ``TaskHandle`` whose
``result()`` is the workflow's result, or raises ``TaskDeadError`` (a step failed) or
``SagaCompensatedError`` (a saga rolled back); its ``status().steps`` lists every step's outcome.

This module only builds messages: no sockets, no threads.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .app import TaskApp, TaskHandle, TaskOptions

KINDS = ("chain", "group", "chord", "saga")


@dataclass(frozen=True)
class Signature:
    """A task name with its arguments and options: one step of a workflow (``add.s(2, 2)``)."""

    task: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # queue, max_attempts, timeout, priority, step_timeout
    immutable: bool = False
    app: TaskApp | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, app: TaskApp | None, name: str, args: Iterable[Any], kwargs: dict[str, Any],
           options: TaskOptions | None = None, *, immutable: bool = False) -> Signature:
        opts: dict[str, Any] = {}
        if options is not None:
            opts = {"queue": options.queue, "max_attempts": options.max_attempts, "timeout": options.timeout,
                    "step_timeout": options.step_timeout}
        return cls(name, tuple(args), dict(kwargs), {k: v for k, v in opts.items() if v is not None}, immutable, app)

    def set(self, **options: Any) -> Signature:
        """A copy with these options (``queue``, ``max_attempts``, ``timeout``, ``priority``, ``step_timeout``)."""
        return replace(self, options={**self.options, **options})

    def to_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"task": self.task, "args": list(self.args), "kwargs": dict(self.kwargs),
                                   **self.options}
        if self.immutable:
            message["immutable"] = True
        return message


@dataclass(frozen=True)
class SagaStep:
    """A saga's step: what to do, and how to undo it once it succeeded (``step(charge.s(), compensate=...)``)."""

    action: Signature
    compensate: Signature | None = None

    def to_message(self) -> dict[str, Any]:
        message = self.action.to_message()
        if self.compensate is not None:
            message["compensate"] = self.compensate.to_message()
        return message


def step(action: Signature, compensate: Signature | None = None) -> SagaStep:
    """A saga step; ``compensate`` runs (with ``action``'s result prepended) if a later step fails."""
    return SagaStep(action, compensate)


@dataclass(frozen=True)
class Workflow:
    """A chain, group, chord or saga, ready to submit; a chain, group or chord may also be a step of
    another chain, group or chord (nesting, as Celery's canvas)."""

    kind: str
    steps: tuple[SagaStep | Workflow, ...]
    callback: Signature | None = None

    def to_message(self, workflow_id: str | None = None, reply_to: str | None = None) -> dict[str, Any]:
        """The wire form (protocol.md, "Workflow")."""
        message: dict[str, Any] = {"id": workflow_id or uuid.uuid4().hex, **self.body()}
        if reply_to is not None:
            message["reply_to"] = reply_to
        return message

    def body(self) -> dict[str, Any]:
        """The shape without an id: the form of a nested workflow in its parent's ``steps``."""
        message: dict[str, Any] = {"kind": self.kind, "steps": [s.body() if isinstance(s, Workflow) else s.to_message()
                                                                for s in self.steps]}
        if self.callback is not None:
            message["callback"] = self.callback.to_message()
        return message

    def signatures(self) -> Iterable[Signature]:
        """Every task signature, nested ones too, in order (a chord's callback last)."""
        for s in self.steps:
            yield from s.signatures() if isinstance(s, Workflow) else (s.action,)
        if self.callback is not None:
            yield self.callback

    def submit(self, app: TaskApp | None = None, *, workflow_id: str | None = None) -> TaskHandle:
        """Publish the workflow on ``P/workflows`` (through ``app``, else the first signature's)."""
        first = next(iter(self.signatures()))
        app = app or next((s.app for s in self.signatures() if s.app is not None), None)
        if app is None:
            raise ConfigError("no app to submit the workflow with: pass app=, or build it from registered tasks")
        message = self.to_message(workflow_id, app.reply_topic)
        return app.send_tracked(app.topics.workflows, message, f"{self.kind}:{first.task}")


def _signatures(items: tuple[Any, ...]) -> tuple[SagaStep | Workflow, ...]:
    if len(items) == 1 and not isinstance(items[0], (Signature, SagaStep, Workflow)):
        items = tuple(items[0])  # one iterable of signatures
    if not items:
        raise ConfigError("a workflow needs at least one step")
    out: list[SagaStep | Workflow] = []
    for item in items:
        if isinstance(item, Workflow) and item.kind != "saga":
            out.append(item)  # nested: a chain, group or chord as one step
        elif isinstance(item, Signature):
            out.append(SagaStep(item))
        else:
            raise ConfigError(f"a workflow's step must be a signature (task.s(...)) or a chain, group or chord, "
                              f"not {_what(item)}")
    return tuple(out)


def _what(item: Any) -> str:
    return "a saga (sagas do not nest)" if isinstance(item, Workflow) else type(item).__name__


def chain(*signatures: Any) -> Workflow:
    """Steps one after another, each result prepended to the next step's args; the result is the last's.
    A step may be a group (or chord): the next step gets the list of its results."""
    return Workflow("chain", _signatures(signatures))


def group(*signatures: Any) -> Workflow:
    """Every member at once; the result is the list of the members' results, in order. A member may
    be a chain: its result is that chain's last."""
    return Workflow("group", _signatures(signatures))


def chord(members: Workflow | Iterable[Signature | Workflow], callback: Signature) -> Workflow:
    """A group, then ``callback`` with the list of the members' results prepended to its args."""
    if isinstance(members, Workflow) and members.kind != "group":
        raise ConfigError(f"a chord's members are a group, not a {members.kind}")
    steps = members.steps if isinstance(members, Workflow) else _signatures((members,))
    return Workflow("chord", steps, callback)


def saga(*steps: SagaStep | Signature) -> Workflow:
    """Steps one after another; when one fails, the compensations of those done run, last first.
    A saga's steps are tasks: workflows do not nest in a saga."""
    if not steps:
        raise ConfigError("a saga needs at least one step")
    if any(not isinstance(s, (SagaStep, Signature)) for s in steps):
        raise ConfigError("a saga's steps are tasks (step(...) or task.s(...)): workflows do not nest in a saga")
    return Workflow("saga", tuple(s if isinstance(s, SagaStep) else SagaStep(s) for s in steps))
