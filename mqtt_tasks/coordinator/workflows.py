"""Workflows: chains, groups, chords and sagas, on the loop's thread (the policy is ``mqtt_tasks.flow``).

Built on these facts (docs/workflows.md):

- A workflow arrives on ``P/workflows`` (any client may publish one). It is decoded and validated
  by ``protocol.messages.Workflow``; a bad one is reported on ``P/errors`` (``Handlers``) and the
  next message is processed. With signing on, the coordinator signs the steps it publishes, so it
  takes only a workflow signed with the same key (``sig``, as a task's). A workflow id already
  recorded is a redelivery or a producer's re-send: nothing happens but its receipt.
- A workflow with a ``receipt_to`` (``TaskApp`` asks while it keeps the workflow, receipts.py)
  gets its id into a receipt there after the commit that recorded it, or when it was recorded
  already (``Effects.receipt``): the producer re-sends it to ``P/workflows`` until then, so a
  workflow published before any coordinator had a session at the broker is not lost.
- The workflow record (``Store.put_workflow``) and the task records of the steps it submits are
  put in the store in the same batch, and the loop commits before it acknowledges the message and
  before it publishes the steps on ``P/tasks/{queue}``. A coordinator killed before the commit gets
  the message again from the broker and starts over (nothing was published); one killed after
  finds the steps recorded. A step whose task record exists already is never submitted again. A
  step published and then lost (a crash between commit and publish, a broker that dropped it) is a
  ``queued`` record like any other: its dispatch timer sends it to a worker.
- A step advances its workflow when its task record becomes final (``Records.finished``, called in
  the batch that made it final): the next steps are recorded in that same commit, so a restart
  neither forgets nor repeats an advance; a later duplicate result finds the record final already.
- The workflow's own status events (``compensating``, and its final one, also to its ``reply_to``)
  go out on ``P/status/{workflow id}`` after the commit, like every effect, marked
  ``source: "coordinator"``.
- A cancel request on ``P/cancel/{workflow id}`` (``CancelRequests`` asks here when no task has
  the id) cancels the running steps' tasks and ends the workflow ``cancelled``, or rolls a saga
  back (``flow.cancel``). One for a nested workflow's id (``{wf}.1``) cancels that nested
  workflow, which fails its parent as a failed step would (``flow.cancel_nested``).
- Running workflows are kept in memory (``live``), read back from the store at start
  (``recover``): a step's end then needs no store read, which could fail during a store outage
  after the step's record had already changed (the workflow would miss that step for good).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .. import flow, leases
from ..errors import DecodeError, SignatureError
from ..protocol import codec, events
from ..protocol.messages import Workflow
from ..protocol.states import CANCELLED, COMPENSATING, RUNNING, SUCCEEDED
from .effects import SOURCE

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..config import Settings
    from ..leases import LeasePolicy
    from ..protocol.topics import Topics
    from ..store.base import TaskRecord
    from ..store.workflows import WorkflowRecord
    from ..transport import Message
    from .effects import Effects
    from .records import Records

log = logging.getLogger(__name__)

RECOVER_LIMIT = 10_000_000
"""Running workflows read back at start, at most (per state): all of them in practice."""


class Workflows:
    """Records workflows, submits their steps, and advances them as steps end."""

    def __init__(self, settings: Settings, topics: Topics, records: Records, effects: Effects, policy: LeasePolicy,
                 clock: Callable[[], float], stats: dict[str, int]) -> None:
        self._settings = settings
        self._topics = topics
        self._records = records
        self._effects = effects
        self._policy = policy
        self._clock = clock
        self._stats = stats
        self.live: dict[str, WorkflowRecord] = {}

    def recover(self) -> int:
        """Load the running (and compensating) workflows from the store; how many there are."""
        for state in (RUNNING, COMPENSATING):
            for workflow in self._records.store.list_workflows(state, limit=RECOVER_LIMIT):
                self.live[workflow.id] = workflow
        return len(self.live)

    def on_message(self, message: Message) -> None:
        """A workflow on ``P/workflows``: record it and submit its first steps (once)."""
        model = codec.decode(Workflow, message.payload, topic=message.topic, max_payload=self._settings.max_payload)
        key = getattr(self._settings, "signing_key", None)
        if key is not None:  # its steps will be signed by the coordinator: only a signed workflow earns that
            from .. import signing

            try:
                signing.verify_payload(message.payload, key)
            except SignatureError as exc:
                raise DecodeError(f"workflow {model.id}: {exc}", payload=message.payload, topic=message.topic,
                                  task_id=model.id) from None
        if self.get(model.id) is not None:
            log.info("coordinator: workflow %s is recorded already", model.id)
        else:
            now = self._clock()
            workflow = flow.new_workflow(model.model_dump(exclude_none=True), now)
            self._stats["workflows"] = self._stats.get("workflows", 0) + 1
            log.info("coordinator: workflow %s (%s of %d steps) recorded", workflow.id, workflow.kind,
                     len(workflow.steps))
            self._apply(workflow, flow.begin(workflow, now))
        if model.receipt_to:  # goes out after the commit that recorded it (or an earlier one did)
            self._effects.receipt(model.receipt_to, model.id)

    def get(self, workflow_id: str) -> WorkflowRecord | None:
        workflow = self.live.get(workflow_id)
        return workflow if workflow is not None else self._records.store.get_workflow(workflow_id)

    def on_task_final(self, record: TaskRecord) -> None:
        """A task record became final: if it is a workflow's step, the workflow moves on."""
        workflow_id = (record.body or {}).get("workflow")
        if not isinstance(workflow_id, str):
            return
        workflow = self.live.get(workflow_id)  # every running workflow is here (``recover``)
        if workflow is None:
            return
        effects = flow.on_step_final(workflow, record.id, record.state, record.result, record.error, record.reason,
                                     self._clock())
        if effects is not None:
            self._apply(workflow, effects)

    def _apply(self, workflow: WorkflowRecord, effects: list[flow.Effect]) -> None:
        self._records.store.put_workflow(workflow)
        if workflow.terminal:
            self.live.pop(workflow.id, None)
        else:
            self.live[workflow.id] = workflow
        for effect in effects:
            if isinstance(effect, flow.Submit):
                self._submit(effect)
            elif isinstance(effect, flow.Stop):
                self._stop(effect)
            else:
                self._announce(workflow, effect)

    def cancel(self, workflow_id: str, reason: str) -> tuple[bool, str | None, str | None] | None:
        """A cancel request for ``workflow_id``: (ok, its state now, why not), or None when no
        workflow has that id (``CancelRequests`` asks here when no task has it)."""
        workflow = self.get(workflow_id)
        if workflow is None:
            return self._cancel_nested(workflow_id, reason)
        effects = flow.cancel(workflow, reason, self._clock())
        if effects is None:
            ok = workflow.state == CANCELLED
            return ok, workflow.state, None if ok else f"cannot cancel workflow {workflow_id!r}: it is {workflow.state}"
        log.info("coordinator: workflow %s cancelled: %s", workflow_id, reason)
        self._apply(workflow, effects)
        return True, workflow.state, None

    def _cancel_nested(self, step_id: str, reason: str) -> tuple[bool, str | None, str | None] | None:
        """A cancel request for a nested workflow (``{wf}.1``): None when no workflow has that step."""
        head = step_id
        while "." in head:  # the workflow's own id may hold dots: try each prefix, longest first
            head = head.rsplit(".", 1)[0]
            workflow = self.get(head)
            path = flow.locate(workflow, step_id) if workflow is not None else None
            if workflow is None or path is None or path[-1].kind is None:
                continue
            effects = flow.cancel_nested(workflow, step_id, reason, self._clock())
            if effects is None:
                return False, path[-1].state, f"cannot cancel nested workflow {step_id!r}: it is {path[-1].state}"
            log.info("coordinator: nested workflow %s cancelled: %s", step_id, reason)
            self._apply(workflow, effects)
            return True, CANCELLED, None
        return None

    def _stop(self, effect: flow.Stop) -> None:
        record = self._records.get(effect.task_id)
        if record is not None and not record.terminal:
            self._records.save(record, leases.on_cancel(record, effect.reason, self._clock()))

    def _submit(self, effect: flow.Submit) -> None:
        if self._records.get(effect.task_id) is not None:
            log.info("coordinator: workflow step %s was recorded already; not again", effect.task_id)
            return
        body = effect.body
        now = self._clock()
        record = self._records.get_or_create(effect.task_id, task=body["task"], queue=body["queue"])
        self._records.save(record, leases.on_task(record, body, now, self._policy))
        key = getattr(self._settings, "signing_key", None)
        if key is not None:
            from .. import signing

            body = signing.sign(body, key)
        self._effects.send(self._topics.tasks(body["queue"]), codec.encode(body))

    def _announce(self, workflow: WorkflowRecord, effect: flow.Announce) -> None:
        log.log(logging.WARNING if effect.final and workflow.state != SUCCEEDED else logging.INFO,
                "coordinator: workflow %s %s: %s", workflow.id, effect.state, effect.reason)
        if effect.final:
            self._stats[f"workflows_{workflow.state}"] = self._stats.get(f"workflows_{workflow.state}", 0) + 1
        payload = encode_event(workflow, effect.state, effect.reason, self._clock(), effect.final,
                               self._settings.max_payload)
        self._effects.send(self._topics.status(workflow.id), payload)
        if effect.final and workflow.reply_to:
            refusal = events.reply_refusal(self._topics, workflow.reply_to)
            if refusal is None:
                self._effects.send(workflow.reply_to, payload)
            else:
                self._effects.report(refusal, workflow.reply_to, None, workflow.id)


def encode_event(workflow: WorkflowRecord, state: str, reason: str, ts: float, final: bool, limit: int) -> bytes:
    """The workflow's event within the payload cap: with every step's result, else without the steps'
    results, else without the steps (``mqtt-tasks status ID`` still shows them all). A result that
    alone is over the cap goes out as it is, and the loop reports that it cannot be published."""
    payload = codec.encode(workflow_event(workflow, state, reason, ts, final))
    if len(payload) > limit:
        payload = codec.encode(workflow_event(workflow, state, reason, ts, final, steps="states"))
    if len(payload) > limit:
        payload = codec.encode(workflow_event(workflow, state, reason, ts, final, steps="none"))
    return payload


def workflow_event(workflow: WorkflowRecord, state: str, reason: str, ts: float, final: bool,
                   steps: str = "all") -> dict[str, Any]:
    """A workflow's status event: its state, result or error, and every step's state (``steps``:
    ``all``, ``states`` without their results, ``none``)."""
    outcome: dict[str, Any] = {}
    if final and state == SUCCEEDED:
        outcome["result"] = workflow.result
    elif final:  # the failed step's error type and traceback, with the workflow's whole story as message
        cause = workflow.error or {}
        outcome["error"] = events.error_info(str(cause.get("type") or "WorkflowFailed"), reason, cause.get("traceback"))
    return events.status_event(workflow.id, state, 1, ts, task=workflow.kind, correlation=workflow.correlation,
                               final=True if final else None, reason=reason, source=SOURCE,
                               workflow=workflow.kind, **outcome,
                               steps=None if steps == "none" else flow.step_views(workflow, steps == "all"))


def workflow_view(workflow: WorkflowRecord) -> dict[str, Any]:
    """A workflow as ``mqtt-tasks status ID`` shows it."""
    return {"id": workflow.id, "workflow": workflow.kind, "state": workflow.state, "reason": workflow.reason,
            "created": workflow.created, "updated": workflow.updated, "result": workflow.result,
            "error": workflow.error, "steps": flow.step_views(workflow)}
