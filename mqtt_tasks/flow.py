"""The workflow policy: what a chain, group, chord or saga does next, as pure functions.

No sockets, threads or clocks: each function takes the ``WorkflowRecord`` (store/workflows.py)
and ``now``, changes the record and returns the *effects* the coordinator carries out
(coordinator/workflows.py):

- ``Submit``: record a step's task (its deterministic id, its body) and dispatch it.
- ``Announce``: publish the workflow's status event (``compensating``, or its final one).
- ``Stop``: cancel a running step's task (``cancel``).

The shapes (docs/workflows.md):

- **chain**: steps one after another; each step's result is prepended to the next step's args
  (unless the signature is immutable); the chain's result is the last step's. A step that ends
  any other way than ``succeeded`` ends the chain ``dead``; the later steps are ``skipped``.
- **group**: every member at once; the group ends when every member has ended: ``succeeded``
  with the list of results when all succeeded, else ``dead``, each member's outcome in the steps.
- **chord**: a group, then a callback with the list of results prepended to its args; a member
  that failed ends the chord ``dead`` and the callback is ``skipped``.
- **saga**: steps one after another (args as given); when a step ends without success, the
  compensations of the steps that succeeded run one at a time, last first, each a task with its
  own retries; a compensation gets its step's result prepended to its args (unless immutable).
  The saga ends ``compensated`` when every compensation succeeded, ``dead`` (naming what could
  not be undone) when one did not; the other compensations still run.
- **nesting**: a step of a chain, group or chord may be a chain, group or chord (not a saga;
  a saga's steps are tasks). It starts with what a task in its place would get (its first tasks
  get it), its result is its own (a chain's last, a group's list, a chord's callback's), and when
  it ends without success its parent takes it as a failed step. Step ids are paths
  (``{wf}.1.0``, ``{wf}.1.callback``): a task's end finds its step by its id, and moves each
  enclosing workflow that it ends in turn, up to the workflow itself (``_climb``).

A cancel request ends a chain, group or chord ``cancelled`` (its running tasks and nested
workflows are cancelled, the rest ``skipped``) and rolls a saga back: its running step counts as
failed (``cancelled``) and the compensations run. A saga already compensating, or a finished
workflow, cannot be cancelled. One for a running nested workflow (``cancel_nested``, by its path)
cancels that one alone, a failed step for its parent.

A step's outcome is taken once: a second final event for it changes nothing, so redelivered and
duplicate results never advance a workflow twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .protocol.states import (
    CANCELLED,
    COMPENSATED,
    COMPENSATING,
    DEAD,
    PENDING,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    TERMINAL_STATES,
)
from .store.workflows import WorkflowRecord, WorkflowStep

COMPENSATION_MAX_ATTEMPTS = 10
"""Attempts of a compensation whose signature does not say: undoing is worth more tries than doing."""

SIGNATURE_OPTIONS = ("max_attempts", "timeout", "priority", "step_timeout")
"""The task options a signature may carry into its task's body."""


@dataclass(frozen=True)
class Submit:
    task_id: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Announce:
    state: str
    reason: str
    final: bool = False


@dataclass(frozen=True)
class Stop:
    """Cancel a running step's task (the workflow was cancelled)."""

    task_id: str
    reason: str


Effect = Submit | Announce | Stop

Node = WorkflowRecord | WorkflowStep
"""The workflow itself or one of its steps (a task, or a nested chain, group or chord)."""


# -- building --------------------------------------------------------------------------------
def new_workflow(message: Mapping[str, Any], now: float) -> WorkflowRecord:
    """The record of a validated workflow message (``protocol.messages.Workflow``, as a dict)."""
    wid = message["id"]
    steps = [_node(raw, f"{wid}.{i}") for i, raw in enumerate(message["steps"])]
    for step, raw in zip(steps, message["steps"], strict=True):
        if raw.get("compensate"):
            step.undo = _sig(raw["compensate"])
            step.undo_id = f"{step.id}.undo"
    callback = message.get("callback")
    return WorkflowRecord(id=wid, kind=message["kind"], steps=steps,
                          callback=WorkflowStep(id=f"{wid}.callback", sig=_sig(callback)) if callback else None,
                          reply_to=message.get("reply_to"), correlation=message.get("correlation"),
                          created=now, updated=now)


def _node(raw: Mapping[str, Any], ident: str) -> WorkflowStep:
    """A step: a task, or a nested chain, group or chord (it has a ``kind``) with its steps one level down."""
    if "kind" not in raw:
        return WorkflowStep(id=ident, sig=_sig(raw))
    callback = raw.get("callback")
    return WorkflowStep(id=ident, sig={}, kind=raw["kind"],
                        steps=[_node(member, f"{ident}.{i}") for i, member in enumerate(raw["steps"])],
                        callback=WorkflowStep(id=f"{ident}.callback", sig=_sig(callback)) if callback else None)


def _sig(raw: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("task", "args", "kwargs", "queue", "immutable", *SIGNATURE_OPTIONS)
    return {k: raw[k] for k in keep if raw.get(k) is not None}


def task_body(workflow: WorkflowRecord, task_id: str, sig: Mapping[str, Any], before: list[Any],
              default_attempts: int | None = None) -> dict[str, Any]:
    """The task a step runs: its signature, with ``before`` prepended to its args unless immutable."""
    args = list(sig.get("args") or [])
    if not sig.get("immutable"):
        args = before + args
    body: dict[str, Any] = {"id": task_id, "task": sig["task"], "args": args, "kwargs": dict(sig.get("kwargs") or {}),
                            "attempt": 1, "queue": sig.get("queue") or "default", "workflow": workflow.id}
    body.update({k: sig[k] for k in SIGNATURE_OPTIONS if k in sig})
    if default_attempts is not None:
        body.setdefault("max_attempts", default_attempts)
    return body


def _submit(workflow: WorkflowRecord, step: WorkflowStep, before: list[Any], now: float) -> Submit:
    step.state = RUNNING
    workflow.updated = now
    return Submit(step.id, task_body(workflow, step.id, step.sig, before))


# -- events: chains, groups and chords, nested ---------------------------------------------------
def begin(workflow: WorkflowRecord, now: float) -> list[Effect]:
    """A new workflow: submit its first step (chain, saga) or every member (group, chord), going
    down into nested workflows to their first tasks."""
    if workflow.kind == "saga":
        return [_submit(workflow, workflow.steps[0], [], now)]
    return _start(workflow, workflow, [], now)


def _start(workflow: WorkflowRecord, node: Node, before: list[Any], now: float) -> list[Effect]:
    """Start ``node`` with ``before`` (the previous step's result, or nothing) for its first tasks."""
    if isinstance(node, WorkflowStep) and node.kind is None:
        return [_submit(workflow, node, before, now)]
    node.state = RUNNING
    if node.kind == "chain":
        return _start(workflow, node.steps[0], before, now)
    effects: list[Effect] = []
    for member in node.steps:
        effects += _start(workflow, member, before, now)
    return effects


def on_step_final(workflow: WorkflowRecord, task_id: str, state: str, result: Any, error: dict[str, Any] | None,
                  reason: str | None, now: float) -> list[Effect] | None:
    """A step's task (or a compensation) ended in ``state``: record it, say what comes next (maybe
    nothing yet: a group waits for its other members). None: the event changes nothing (not a
    running step of this workflow: a duplicate, a stranger, a workflow that ended)."""
    if workflow.terminal or state not in TERMINAL_STATES:
        return None
    if workflow.kind == "saga":
        return _on_saga_final(workflow, task_id, state, result, error, reason, now)
    path = locate(workflow, task_id)
    if path is None or path[-1].kind is not None or path[-1].state != RUNNING:
        return None
    _take(path[-1], state, result, error, reason)
    workflow.updated = now
    return _climb(workflow, path, now)


def locate(workflow: WorkflowRecord, task_id: str) -> list[WorkflowStep] | None:
    """The steps from the top down to the one with ``task_id`` (its id is its path), or None: not a
    step of this workflow."""
    if not task_id.startswith(workflow.id + "."):
        return None
    path: list[WorkflowStep] = []
    node: Node = workflow
    for part in task_id[len(workflow.id) + 1:].split("."):
        if part == "callback":
            child = node.callback
        elif part.isascii() and part.isdigit() and int(part) < len(node.steps):
            child = node.steps[int(part)]
        else:
            return None
        if child is None:
            return None
        path.append(child)
        node = child
    return path if path[-1].id == task_id else None


def _climb(workflow: WorkflowRecord, path: list[WorkflowStep], now: float) -> list[Effect]:
    """A step ended: its parent moves on; a parent that ends in turn moves its own parent, up to
    the workflow."""
    parents: list[Node] = [workflow, *path[:-1]]
    child = path[-1]
    effects: list[Effect] = []
    for parent in reversed(parents):
        effects = _advance(workflow, parent, child, now)
        if parent.state == RUNNING:
            return effects
        if isinstance(parent, WorkflowRecord):
            break
        child = parent
    return effects


def _advance(workflow: WorkflowRecord, parent: Node, child: WorkflowStep, now: float) -> list[Effect]:
    """``child`` of ``parent`` ended: start what comes next, wait, or end ``parent``."""
    key = child.id[len(parent.id) + 1:]
    if parent.kind == "chain":
        index = int(key)
        if child.state == SUCCEEDED and index + 1 < len(parent.steps):
            return _start(workflow, parent.steps[index + 1], [child.result], now)
        return _decided_by(workflow, parent, child, now)
    if key == "callback":
        return _decided_by(workflow, parent, child, now)
    return _after_members(workflow, parent, now)


def _decided_by(workflow: WorkflowRecord, node: Node, step: WorkflowStep, now: float) -> list[Effect]:
    """The step that decides ``node`` ended: a chain's last (or its first failure), a chord's callback."""
    if step.state == SUCCEEDED:
        return _conclude(workflow, node, SUCCEEDED, f"{_label(workflow, step)} succeeded", now, result=step.result)
    return _conclude(workflow, node, DEAD, f"{_label(workflow, step)} {step.reason}", now, failed=step)


def _after_members(workflow: WorkflowRecord, node: Node, now: float) -> list[Effect]:
    """A group's or chord's member ended: wait for the others, then end or call back."""
    members = node.steps
    if any(m.state == RUNNING for m in members):
        return []
    failed = [m for m in members if m.state != SUCCEEDED]
    if failed:
        first = failed[0]
        return _conclude(workflow, node, DEAD, f"{len(failed)} of {len(members)} members failed, first "
                         f"{_label(workflow, first)} {first.reason}", now, failed=first)
    results = [m.result for m in members]
    if node.callback is None:
        return _conclude(workflow, node, SUCCEEDED, f"all {len(members)} members succeeded", now, result=results)
    return _start(workflow, node.callback, [results], now)


def _conclude(workflow: WorkflowRecord, node: Node, state: str, reason: str, now: float, result: Any = None,
              failed: WorkflowStep | None = None) -> list[Effect]:
    """``node`` ends in ``state``: what it left pending is skipped; the workflow's end is announced."""
    node.state = state
    node.reason = reason
    if failed is None:
        node.result = result
    else:
        node.error = failed.error
        _skip_pending(node)
    if isinstance(node, WorkflowStep):
        return []
    if failed is not None:
        top = failed.id[len(workflow.id) + 1:].split(".", 1)[0]
        workflow.failed_step = len(workflow.steps) if top == "callback" else int(top)
    return _finish(workflow, state, reason, now)


def _take(step: WorkflowStep, state: str, result: Any, error: dict[str, Any] | None, reason: str | None) -> None:
    step.state = state
    if state == SUCCEEDED:
        step.result = result
    else:
        step.error = error
        step.reason = _why(state, error, reason)


def _why(state: str, error: dict[str, Any] | None, reason: str | None) -> str:
    if error and error.get("message"):
        return f"{state}: {error.get('type') or 'Error'}: {error['message']}"
    return f"{state}: {reason}" if reason else state


# -- events: sagas (flat: their steps are tasks) ------------------------------------------------
def _on_saga_final(workflow: WorkflowRecord, task_id: str, state: str, result: Any, error: dict[str, Any] | None,
                   reason: str | None, now: float) -> list[Effect] | None:
    for index, step in enumerate(workflow.steps):
        if step.id == task_id and step.state == RUNNING:
            _take(step, state, result, error, reason)
            workflow.updated = now
            return _after_saga_step(workflow, index, now)
        if step.undo_id == task_id and step.undo_state == RUNNING:
            step.undo_state = state
            step.undo_reason = _why(state, error, reason)
            workflow.updated = now
            return _compensate_next(workflow, now)
    return None


def _after_saga_step(workflow: WorkflowRecord, index: int, now: float) -> list[Effect]:
    step = workflow.steps[index]
    if step.state == SUCCEEDED:
        if index + 1 < len(workflow.steps):
            return [_submit(workflow, workflow.steps[index + 1], [], now)]
        workflow.result = [s.result for s in workflow.steps]
        return _finish(workflow, SUCCEEDED, f"all {len(workflow.steps)} steps succeeded", now)
    _skip_pending(workflow)
    workflow.failed_step = index
    workflow.error = step.error
    workflow.state = COMPENSATING
    for done in workflow.steps[:index]:
        if done.state == SUCCEEDED and done.undo is not None:
            done.undo_state = PENDING
    reason = f"{_label(workflow, step)} {step.reason}"
    workflow.reason = reason
    return [Announce(COMPENSATING, reason), *_compensate_next(workflow, now)]


def _compensate_next(workflow: WorkflowRecord, now: float) -> list[Effect]:
    """Submit the next compensation (last step first), or end the saga when none is left."""
    for step in reversed(workflow.steps):
        if step.undo_state == RUNNING:
            return []
        if step.undo_state == PENDING and step.undo is not None and step.undo_id is not None:
            step.undo_state = RUNNING
            workflow.updated = now
            return [Submit(step.undo_id, task_body(workflow, step.undo_id, step.undo, [step.result],
                                                   COMPENSATION_MAX_ATTEMPTS))]
    failed = workflow.steps[workflow.failed_step or 0]
    cause = f"{_label(workflow, failed)} {failed.reason}"
    undone = [i for i, s in enumerate(workflow.steps) if s.undo_state == SUCCEEDED]
    stuck = [s for s in workflow.steps if s.undo_state not in (None, SUCCEEDED)]
    if stuck:
        names = "; ".join(f"{_label(workflow, s)} ({s.undo_reason})" for s in stuck)
        return _finish(workflow, DEAD, f"{cause}; could not undo {names}", now)
    return _finish(workflow, COMPENSATED, f"{cause}; undone: {_indexes(undone)}", now)


# -- cancel ------------------------------------------------------------------------------------
def cancel(workflow: WorkflowRecord, reason: str, now: float) -> list[Effect] | None:
    """A cancel request: the effects, or None when the workflow cannot be cancelled (it ended, or
    is a saga compensating already). Every running task is cancelled, every running nested
    workflow ends ``cancelled``, what has not started is ``skipped``; a saga compensates."""
    if workflow.terminal or workflow.state == COMPENSATING:
        return None
    why = f"cancelled: {reason}"
    stops = _cancel_running(workflow, reason)
    workflow.updated = now
    if workflow.kind == "saga":
        running = next((i for i, s in enumerate(workflow.steps) if s.state == CANCELLED), 0)
        return stops + _after_saga_step(workflow, running, now)
    _skip_pending(workflow)
    return stops + _finish(workflow, CANCELLED, why, now)


def cancel_nested(workflow: WorkflowRecord, step_id: str, reason: str, now: float) -> list[Effect] | None:
    """A cancel request for a running nested workflow (``step_id`` is its path, ``{wf}.1``): its
    running tasks are cancelled, the rest skipped, and it ends ``cancelled``, which its parent takes
    as a failed step. None: no such nested workflow is running."""
    path = locate(workflow, step_id) if not workflow.terminal else None
    if path is None or path[-1].kind is None or path[-1].state != RUNNING:
        return None
    stops = _cancel_running(path[-1], reason)
    _skip_pending(path[-1])
    workflow.updated = now
    return stops + _climb(workflow, path, now)


def _cancel_running(node: Node, reason: str) -> list[Effect]:
    """Every running step in ``node`` (itself too) ends ``cancelled``; a task's is stopped."""
    stops: list[Effect] = []
    for step in node.walk():
        if step.state == RUNNING:
            step.state = CANCELLED
            step.reason = f"cancelled: {reason}"
            if step.kind is None:
                stops.append(Stop(step.id, reason))
    return stops


def _skip_pending(node: Node) -> None:
    for step in node.walk():
        if step.state == PENDING:
            step.state = SKIPPED


def _finish(workflow: WorkflowRecord, state: str, reason: str, now: float) -> list[Effect]:
    workflow.state = state
    workflow.reason = reason
    workflow.updated = now
    return [Announce(state, reason, final=True)]


def _label(workflow: WorkflowRecord, step: WorkflowStep) -> str:
    """``step 1.0 (add)``, ``step 2 (group)``, ``callback (total)``: the step's path and task or kind."""
    path = step.id[len(workflow.id) + 1:]
    name = step.sig.get("task") or step.kind
    return f"callback ({name})" if path == "callback" else f"step {path} ({name})"


def _indexes(indexes: list[int]) -> str:
    return ", ".join(f"step {i}" for i in indexes) if indexes else "nothing needed undoing"


# -- views -----------------------------------------------------------------------------------
def step_views(workflow: WorkflowRecord, results: bool = True) -> list[dict[str, Any]]:
    """Each step's id, task, state and outcome (and a saga step's compensation), for events and
    status; a nested workflow as its id, ``kind``, state and its own ``steps``. ``results=False``
    leaves the steps' results out (an event that would be too large)."""
    return [_view(step, results) for step in workflow.children()]


def _view(step: WorkflowStep, results: bool) -> dict[str, Any]:
    if step.kind is not None:
        nested: dict[str, Any] = {"id": step.id, "kind": step.kind, "state": step.state}
        if step.reason and step.state != SUCCEEDED:
            nested["reason"] = step.reason
        nested["steps"] = [_view(child, results) for child in step.children()]
        return nested
    view: dict[str, Any] = {"id": step.id, "task": step.sig.get("task"), "state": step.state}
    if step.state == SUCCEEDED and results:
        view["result"] = step.result
    elif step.reason:
        view["reason"] = step.reason
    if step.undo is not None:
        view["compensate"] = {"id": step.undo_id, "task": step.undo.get("task"), "state": step.undo_state}
        if step.undo_reason and step.undo_state != SUCCEEDED:
            view["compensate"]["reason"] = step.undo_reason
    return view
