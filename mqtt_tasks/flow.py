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

A cancel request ends a chain, group or chord ``cancelled`` (its running steps are cancelled, the
rest ``skipped``) and rolls a saga back: its running step counts as failed (``cancelled``) and the
compensations run. A saga already compensating, or a finished workflow, cannot be cancelled.

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


# -- building --------------------------------------------------------------------------------
def new_workflow(message: Mapping[str, Any], now: float) -> WorkflowRecord:
    """The record of a validated workflow message (``protocol.messages.Workflow``, as a dict)."""
    wid = message["id"]
    steps = [WorkflowStep(id=f"{wid}.{i}", sig=_sig(s)) for i, s in enumerate(message["steps"])]
    for i, (step, raw) in enumerate(zip(steps, message["steps"], strict=True)):
        if raw.get("compensate"):
            step.undo = _sig(raw["compensate"])
            step.undo_id = f"{wid}.{i}.undo"
    callback = message.get("callback")
    return WorkflowRecord(id=wid, kind=message["kind"], steps=steps,
                          callback=WorkflowStep(id=f"{wid}.callback", sig=_sig(callback)) if callback else None,
                          reply_to=message.get("reply_to"), correlation=message.get("correlation"),
                          created=now, updated=now)


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


# -- events ----------------------------------------------------------------------------------
def begin(workflow: WorkflowRecord, now: float) -> list[Effect]:
    """A new workflow: submit its first step (chain, saga) or every member (group, chord)."""
    if workflow.kind in ("chain", "saga"):
        return [_submit(workflow, workflow.steps[0], [], now)]
    return [_submit(workflow, step, [], now) for step in workflow.steps]


def on_step_final(workflow: WorkflowRecord, task_id: str, state: str, result: Any, error: dict[str, Any] | None,
                  reason: str | None, now: float) -> list[Effect] | None:
    """A step's task (or a compensation) ended in ``state``: record it, say what comes next (maybe
    nothing yet: a group waits for its other members). None: the event changes nothing (not a
    running step of this workflow: a duplicate, a stranger, a workflow that ended)."""
    if workflow.terminal or state not in TERMINAL_STATES:
        return None
    for index, step in enumerate(workflow.steps):
        if step.id == task_id and step.state == RUNNING:
            _take(step, state, result, error, reason)
            workflow.updated = now
            return _NEXT[workflow.kind](workflow, index, now)
        if step.undo_id == task_id and step.undo_state == RUNNING:
            step.undo_state = state
            step.undo_reason = _why(state, error, reason)
            workflow.updated = now
            return _compensate_next(workflow, now)
    callback = workflow.callback
    if callback is not None and callback.id == task_id and callback.state == RUNNING:
        _take(callback, state, result, error, reason)
        workflow.updated = now
        return _after_last(workflow, callback, len(workflow.steps), now)
    return None


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


def _after_chain_step(workflow: WorkflowRecord, index: int, now: float) -> list[Effect]:
    step = workflow.steps[index]
    if step.state != SUCCEEDED or index + 1 == len(workflow.steps):
        return _after_last(workflow, step, index, now)
    return [_submit(workflow, workflow.steps[index + 1], [step.result], now)]


def _after_last(workflow: WorkflowRecord, step: WorkflowStep, index: int, now: float) -> list[Effect]:
    """The step that decides a chain (its last, or its first failure) or a chord's callback ended."""
    if step.state == SUCCEEDED:
        workflow.result = step.result
        return _finish(workflow, SUCCEEDED, f"{_label(step, index)} succeeded", now)
    _skip_pending(workflow)
    workflow.failed_step = index
    workflow.error = step.error
    return _finish(workflow, DEAD, f"{_label(step, index)} {step.reason}", now)


def _after_member(workflow: WorkflowRecord, index: int, now: float) -> list[Effect]:
    """A group's or chord's member ended: wait for the others, then finish or call back."""
    members = workflow.steps
    if any(m.state == RUNNING for m in members):
        return []
    failed = [(i, m) for i, m in enumerate(members) if m.state != SUCCEEDED]
    results = [m.result for m in members]
    if failed:
        _skip_pending(workflow)
        first_index, first = failed[0]
        workflow.error = first.error
        workflow.failed_step = first_index
        return _finish(workflow, DEAD, f"{len(failed)} of {len(members)} members failed, first "
                       f"{_label(first, first_index)} {first.reason}", now)
    if workflow.callback is None:
        workflow.result = results
        return _finish(workflow, SUCCEEDED, f"all {len(members)} members succeeded", now)
    return [_submit(workflow, workflow.callback, [results], now)]


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
    reason = f"{_label(step, index)} {step.reason}"
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
    failed_step = workflow.failed_step or 0
    cause = f"{_label(workflow.steps[failed_step], failed_step)} {workflow.steps[failed_step].reason}"
    undone = [i for i, s in enumerate(workflow.steps) if s.undo_state == SUCCEEDED]
    stuck = [(i, s) for i, s in enumerate(workflow.steps) if s.undo_state not in (None, SUCCEEDED)]
    if stuck:
        names = "; ".join(f"{_label(s, i)} ({s.undo_reason})" for i, s in stuck)
        return _finish(workflow, DEAD, f"{cause}; could not undo {names}", now)
    return _finish(workflow, COMPENSATED, f"{cause}; undone: {_indexes(undone)}", now)


def cancel(workflow: WorkflowRecord, reason: str, now: float) -> list[Effect] | None:
    """A cancel request: the effects, or None when the workflow cannot be cancelled (it ended, or
    is a saga compensating already)."""
    if workflow.terminal or workflow.state == COMPENSATING:
        return None
    why = f"cancelled: {reason}"
    running = [(i, s) for i, s in enumerate(workflow.all_steps()) if s.state == RUNNING]
    stops: list[Effect] = [Stop(s.id, reason) for _i, s in running]
    for _i, step in running:
        step.state = CANCELLED
        step.reason = why
    workflow.updated = now
    if workflow.kind == "saga":
        return stops + _after_saga_step(workflow, running[0][0], now)
    _skip_pending(workflow)
    return stops + _finish(workflow, CANCELLED, why, now)


def _skip_pending(workflow: WorkflowRecord) -> None:
    for step in workflow.all_steps():
        if step.state == PENDING:
            step.state = SKIPPED


def _finish(workflow: WorkflowRecord, state: str, reason: str, now: float) -> list[Effect]:
    workflow.state = state
    workflow.reason = reason
    workflow.updated = now
    return [Announce(state, reason, final=True)]


def _label(step: WorkflowStep, index: int) -> str:
    return f"step {index} ({step.sig.get('task')})" if not step.id.endswith(".callback") else \
        f"callback ({step.sig.get('task')})"


def _indexes(indexes: list[int]) -> str:
    return ", ".join(f"step {i}" for i in indexes) if indexes else "nothing needed undoing"


_NEXT = {"chain": _after_chain_step, "group": _after_member, "chord": _after_member, "saga": _after_saga_step}


# -- views -----------------------------------------------------------------------------------
def step_views(workflow: WorkflowRecord, results: bool = True) -> list[dict[str, Any]]:
    """Each step's id, task, state and outcome (and a saga step's compensation), for events and
    status; ``results=False`` leaves the steps' results out (an event that would be too large)."""
    views = []
    for step in workflow.all_steps():
        view: dict[str, Any] = {"id": step.id, "task": step.sig.get("task"), "state": step.state}
        if step.state == SUCCEEDED and results:
            view["result"] = step.result
        elif step.reason:
            view["reason"] = step.reason
        if step.undo is not None:
            view["compensate"] = {"id": step.undo_id, "task": step.undo.get("task"), "state": step.undo_state}
            if step.undo_reason and step.undo_state != SUCCEEDED:
                view["compensate"]["reason"] = step.undo_reason
        views.append(view)
    return views
