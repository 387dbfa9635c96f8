"""Pydantic models of the wire contract (v1). Pure: no sockets, threads or clocks.

Unknown fields are kept (``extra="allow"``) so that a producer's own fields survive a
re-dispatch by the coordinator, and a v1 consumer ignores what it does not know.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from . import labels, validate
from .rates import RATE_KEY_MAX, RATE_LIMIT_PATTERN, rate_limit_problem
from .states import (  # noqa: F401 - re-exported: the states belong to the contract
    CANCELLED,
    COORDINATOR_STATES,
    DEAD,
    DEFERRED,
    DUPLICATE,
    EXPIRED,
    FAILED,
    NESTED_WORKFLOW_KINDS,
    PRIORITY_MAX,
    PRIORITY_MIN,
    PROGRESS,
    QUEUED,
    RETRYING,
    SCHEDULED,
    STARTED,
    STATUS_STATES,
    SUCCEEDED,
    TASK_NAME_PATTERN,
    TERMINAL_STATES,
    WORKER_STATES,
    WORKFLOW_KINDS,
)
from .topics import ID_PATTERN

if TYPE_CHECKING:
    StatusState = str
    WorkerStateName = str
    CoordinatorStateName = str
    WorkflowKind = str
    NestedKind = str
else:  # the vocabulary of states.py, as enums in the JSON Schema
    StatusState = Literal[STATUS_STATES]
    WorkerStateName = Literal[WORKER_STATES]
    CoordinatorStateName = Literal[COORDINATOR_STATES]
    WorkflowKind = Literal[WORKFLOW_KINDS]
    NestedKind = Literal[NESTED_WORKFLOW_KINDS]


Label = Annotated[str, Field(pattern=labels.LABEL_PATTERN)]


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


def plain_topic(value: str | None, name: str) -> str | None:
    """A reply or receipt topic: a plain topic name (no wildcards, not ``$...``)."""
    if value is not None and ("+" in value or "#" in value or value.startswith("$")):
        raise ValueError(f"{name} must be a plain topic name (no wildcards, not $...)")
    return value


class Task(_Message):
    """A task as published on ``P/tasks/{queue}``."""

    id: str = Field(pattern=ID_PATTERN, description="1-128 characters of A-Z a-z 0-9 _ . : -; unique per task")
    task: str = Field(pattern=TASK_NAME_PATTERN, description="the registered task name, e.g. images.resize")
    args: list[Any] = Field(default_factory=list, description="positional arguments")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments")
    attempt: int = Field(default=1, ge=1, description="1 when first published; set by the coordinator on re-dispatch")
    max_attempts: int | None = Field(
        default=None, ge=1, le=1000, description="attempts before the task is dead; default: the registration's, else 3"
    )
    timeout: float | None = Field(default=None, gt=0, description="seconds one attempt may run")
    reply_to: str | None = Field(default=None, min_length=1, max_length=512,
                                 description="topic that receives the final status event")
    correlation: str | None = Field(
        default=None, max_length=1024, description="echoed in status events (MQTT 3.1.1 stand-in for Correlation Data)"
    )
    expires_at: float | None = Field(default=None, description="epoch seconds; not started by then: expired")
    queue: str | None = Field(default=None, pattern=ID_PATTERN,
                              description="the queue; taken from the topic when absent")
    alone: bool | None = Field(default=None, description="set by the coordinator on a suspect (a task lost with its "
                               "worker before; by default twice): run it with nothing else running in the worker "
                               "process")
    receipt_to: str | None = Field(default=None, min_length=1, max_length=512,
                                   description="topic that receives the coordinator's receipt once it recorded the "
                                               "task (a Receipt, batched per commit)")
    not_before: float | None = Field(default=None, description="epoch seconds (the fleet's clock, the "
                                     "coordinator's); the task does not start before then: the coordinator "
                                     "holds it (state scheduled)")
    priority: int | None = Field(default=None, ge=PRIORITY_MIN, le=PRIORITY_MAX, description="0-9, higher "
                                 "first; orders the coordinator's backlog, not the shared topic; absent: 5")
    step_timeout: float | None = Field(default=None, gt=0, description="seconds a started attempt may go without "
                                       "reporting progress before the coordinator presumes it hung")
    schedule: str | None = Field(default=None, description="set by the coordinator on a periodic task's fire: "
                                 "the schedule's name (docs/scheduling.md)")
    scheduled_for: float | None = Field(default=None, description="with schedule: the fire time, epoch seconds")
    workflow: str | None = Field(default=None, description="set by the coordinator on a workflow's step: the "
                                 "workflow's id (docs/workflows.md)")
    traceparent: str | None = Field(default=None, description="W3C trace context of the producer's send (also in "
                                    "the MQTT 5 User Property of that name); carried through the coordinator")
    tracestate: str | None = Field(default=None, description="W3C tracestate that goes with traceparent")
    rate_limit: str | None = Field(default=None, json_schema_extra={"pattern": RATE_LIMIT_PATTERN},  # checked below
                                   description="COUNT/[N]UNIT (10/s, "
                                   "100/m, 1000/h, 5/10s): the coordinator dispatches at most COUNT tasks of this "
                                   "name (and rate_key) in any such window, across the fleet; count 1-10000, "
                                   "period at most 24 h")
    rate_key: str | None = Field(default=None, min_length=1, max_length=RATE_KEY_MAX, description="with "
                                 "rate_limit: the limit applies to each key separately (a device, a customer)")
    requires: list[Label] | None = Field(default=None, max_length=labels.MAX_REQUIRED,
                                       description="labels the worker that runs it must all have (0-3 distinct "
                                                   "labels of 1-64 characters of A-Z a-z 0-9 _ . : -; "
                                                   "docs/routing.md)")

    @field_validator("requires")
    @classmethod
    def _requires_labels(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (reason := labels.problem(value)) is not None:
            raise ValueError(reason)
        return value

    @field_validator("priority", "alone", "schedule", "scheduled_for", "workflow", "traceparent", "tracestate",
                     mode="before")
    @classmethod
    def _informative_fields_are_read_leniently(cls, value: Any, info: ValidationInfo) -> Any:
        return validate.lenient(str(info.field_name), value)  # a wrong type reads as absent (validate.py)

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit_parses(cls, value: str | None) -> str | None:
        if value is not None and (problem := rate_limit_problem(value)) is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _rate_key_needs_a_limit(self) -> Task:
        if self.rate_key is not None and self.rate_limit is None:
            raise ValueError("rate_key given without a rate_limit")
        return self

    @field_validator("reply_to", "receipt_to")
    @classmethod
    def _reply_to_is_a_topic(cls, value: str | None, info: ValidationInfo) -> str | None:
        return plain_topic(value, str(info.field_name))


class ErrorInfo(_Message):
    type: str = Field(description="the exception's class name")
    message: str = Field(description="the exception's message")
    traceback: str | None = Field(default=None, description="the formatted traceback, where there is one")


class StatusEvent(_Message):
    """An event on ``P/status/{task_id}`` (and, when final, on the task's reply topic)."""

    id: str = Field(pattern=ID_PATTERN)
    state: StatusState
    attempt: int = Field(default=1, ge=1)
    ts: float = Field(description="seconds since the epoch")
    worker: str | None = None
    task: str | None = Field(default=None, description="the task name")
    queue: str | None = None
    result: Any = None
    error: ErrorInfo | None = None
    progress: Any = Field(default=None, description='on progress: {"fraction": 0-1, "message": "..."} as the '
                          "task reported it (a worker of this library); any JSON from other senders")
    final: bool | None = Field(default=None, description="true on the last event of the task")
    max_attempts: int | None = Field(default=None, description="on failed: the attempt limit the worker applied")
    reason: str | None = Field(default=None, description="why: dead, expired, cancelled, retrying, deferred")
    correlation: str | None = None
    body: dict[str, Any] | None = Field(default=None, description="the task itself, on deferred events")
    abandoned: bool | None = Field(default=None, description="on deferred: the attempt had started and its "
                                   "stopping worker gave up on it after its grace period; it will never report it")
    alone: bool | None = Field(default=None, description="on started: the worker runs this attempt with nothing else")
    delayed: bool | None = Field(default=None, description="on deferred: handed over because its not_before is "
                                 "ahead (the coordinator holds it until then) or it has a rate_limit (the "
                                 "coordinator dispatches it within the limit)")
    workflow: str | None = Field(default=None, description="on a workflow's own events: its kind (chain, group, "
                                 "chord, saga)")
    steps: list[dict[str, Any]] | None = Field(default=None, description="on a workflow's own events: each step's "
                                               "id, task, state, result or reason (and compensation); a "
                                               "nested workflow's id, kind, state, reason and its own steps")
    rate_limit: str | None = Field(default=None, description="on deferred (delayed): the rate limit of the "
                                   "worker's registration of a task that carried none; the coordinator adopts it")
    rate_key: str | None = Field(default=None, description="with rate_limit: the key the worker read from the "
                                 "task's arguments")
    routed: bool | None = Field(default=None, description="on deferred: handed over because this worker lacks a "
                                "label the task requires; the coordinator gives it to a worker that has them")


class HeldTask(_Message):
    id: str = Field(pattern=ID_PATTERN)
    attempt: int = Field(default=1, ge=1)
    started: float | None = None


class WorkerState(_Message):
    """Retained on ``P/workers/{worker_id}``: the heartbeat, and the Last Will ``offline``."""

    worker: str
    state: WorkerStateName
    queues: list[str] = Field(default_factory=list)
    concurrency: int = 0
    tasks: list[HeldTask] = Field(default_factory=list)
    ts: float
    heartbeat_s: float = 0
    free: int | None = Field(default=None, description="free slots at the time of the heartbeat")
    waiting: int | None = Field(default=None, description="tasks received and waiting here for a free slot")
    full_ago: float | None = Field(default=None, description="seconds since the worker last had no free slot "
                                                              "(0: now; absent: not since it started)")
    stuck: int | None = Field(default=None, description="slots taken by cancelled task bodies that did not stop "
                              "within the cancel grace (Python cannot stop a thread)")
    group: str | None = None
    labels: list[Label] | None = Field(default=None, description="the worker's capability labels (docs/routing.md)")
    pid: int | None = None
    host: str | None = None
    version: str | None = None
    code: dict[str, str] | None = Field(default=None, description="module -> version of the code bundles this "
                                                                  "worker applied (docs/deploy.md)")


class CoordinatorPresence(_Message):
    """Retained on ``P/coordinator``: ``online``; ``degraded`` while its store cannot commit (it records
    in memory and dispatches nothing: workers treat it as absent); ``offline``, also its Last Will.
    Also sent live (not retained) as a reading of the fleet's clock (docs/protocol.md)."""

    state: CoordinatorStateName
    ts: float | None = Field(default=None, description="absent in the Last Will")
    client: str | None = Field(default=None, description="the coordinator's client id")
    pid: int | None = Field(default=None, description="absent in the Last Will")
    resumed: bool | None = Field(default=None, description="on online: the broker still had the coordinator's "
                                                            "session; false: what was queued for it is gone")
    name: str | None = Field(default=None, description="with several coordinators on the prefix: which one this is "
                                                       "(they share the client id)")
    epoch: int | None = Field(default=None, description="with several coordinators: the leadership epoch of the "
                                                        "leader that speaks")


class Receipt(_Message):
    """Sent to a task's ``receipt_to`` once the coordinator's record of it is committed."""

    ids: list[str] = Field(description="the ids of the tasks recorded, one commit's worth per receipt topic")
    ts: float
    client: str | None = Field(default=None, description="the coordinator's client id")
class CancelRequest(_Message):
    """Published on ``P/cancel/{task_id}``; read by the coordinator and by every worker."""

    reason: str | None = Field(default=None, max_length=1024, description="why; echoed in the cancelled event")
    reply_to: str | None = Field(default=None, min_length=1, max_length=512,
                                 description="topic that receives the coordinator's answer")
    correlation: str | None = Field(default=None, max_length=1024, description="echoed in the answer")


class ErrorReport(_Message):
    """Published on ``P/errors`` by any component that rejects input."""

    component: str = Field(description="worker, coordinator, producer")
    source: str | None = Field(default=None, description="worker or client id of the reporter")
    topic: str | None = Field(default=None, description="where the input arrived")
    reason: str
    id: str | None = Field(default=None, description="the task id, where one could be read")
    payload: str | None = Field(default=None, description="the rejected payload, truncated, as text")
    size: int | None = None
    ts: float


SCHEDULE_NAME_PATTERN = r"^[A-Za-z0-9_.\-]{1,100}$"
"""A schedule's name: no ``:``, which separates it from the fire time in a fire's task id."""


class Schedule(_Message):
    """A periodic task, as sent in the coordinator's ``schedule.put`` query (docs/scheduling.md)."""

    name: str = Field(pattern=SCHEDULE_NAME_PATTERN, description="1-100 characters of A-Z a-z 0-9 _ . -")
    task: str = Field(pattern=TASK_NAME_PATTERN, description="the registered task name each fire runs")
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    queue: str = Field(default="default", pattern=ID_PATTERN)
    cron: str | None = Field(default=None, description="five-field cron expression or macro (@hourly ...)")
    every: int | None = Field(default=None, ge=1, le=366 * 86400, description="or: seconds between fires, "
                              "at the multiples of it since the epoch")
    timezone: str = Field(default="UTC", description="IANA zone the cron expression reads the clock in")
    overlap: Literal["skip", "buffer_one", "allow_all"] = Field(
        default="skip", description="a fire while an earlier fire's task is unfinished")
    catchup: Literal["none", "last", "all"] = Field(default="last", description="fires missed while down")
    catchup_window: float = Field(default=3600.0, gt=0, le=7 * 86400,
                                  description="seconds: missed fires older than this never run")
    max_attempts: int | None = Field(default=None, ge=1, le=1000)
    timeout: float | None = Field(default=None, gt=0)
    source: str | None = Field(default=None, max_length=64, description="who declared it: cli, code, ...")

    @field_validator("cron")
    @classmethod
    def _cron_parses(cls, value: str | None) -> str | None:
        if value is not None:
            from ..cron import parse

            parse(value)
        return value

    @field_validator("timezone")
    @classmethod
    def _zone_exists(cls, value: str) -> str:
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(value)
        except (ValueError, KeyError, OSError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as Europe/Berlin)") from None
        return value

    @model_validator(mode="after")
    def _one_timing(self) -> Schedule:
        if (self.cron is None) == (self.every is None):
            raise ValueError("give exactly one of cron and every")
        return self


WORKFLOW_ID_PATTERN = r"^[A-Za-z0-9_.:\-]{1,100}$"
"""A workflow's id: 100 characters at most, leaving room for its steps' ids (``{id}.{index}.undo``)."""
MAX_WORKFLOW_STEPS = 1000
"""Tasks in a workflow's steps at most, counted down nested workflows (chords' callbacks aside)."""
MAX_WORKFLOW_DEPTH = 4
"""Workflows inside workflows at most: a chain of groups of chains of groups. With the id's 100
characters and indexes below 1,000, a step's id (a task id) stays within 128 characters
(tests/test_workflow_policy.py checks the sum)."""


class Signature(_Message):
    """A task to run as one step of a workflow: a task name, its arguments and options."""

    task: str = Field(pattern=TASK_NAME_PATTERN, description="the registered task name")
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    queue: str | None = Field(default=None, pattern=ID_PATTERN, description="default: default")
    immutable: bool | None = Field(default=None, description="true: the previous result is not prepended to args")
    max_attempts: int | None = Field(default=None, ge=1, le=1000)
    timeout: float | None = Field(default=None, gt=0)
    priority: int | None = Field(default=None, ge=PRIORITY_MIN, le=PRIORITY_MAX)
    step_timeout: float | None = Field(default=None, gt=0)
    compensate: Signature | None = Field(default=None, description="a saga step's compensation (saga only)")


def _step_kind(value: Any) -> str:
    """A step with a ``kind`` is a nested workflow, any other a task."""
    has_kind = "kind" in value if isinstance(value, dict) else isinstance(value, NestedWorkflow)
    return "workflow" if has_kind else "task"


Step = Annotated[Annotated[Signature, Tag("task")] | Annotated["NestedWorkflow", Tag("workflow")],
                 Discriminator(_step_kind)]


class NestedWorkflow(_Message):
    """A chain, group or chord as one step of a workflow (not a saga; docs/workflows.md, "Nesting")."""

    kind: NestedKind = Field(description="chain, group or chord")
    steps: list[Step] = Field(min_length=1, max_length=MAX_WORKFLOW_STEPS,
                              description="its steps or members: tasks, or workflows nested further")
    callback: Signature | None = Field(default=None, description="a chord's callback (chord only, required)")

    @model_validator(mode="after")
    def _shape(self) -> NestedWorkflow:
        _check_shape(self.kind, self.steps, self.callback)
        return self


def _check_shape(kind: str, steps: list[Any], callback: Signature | None) -> None:
    if (kind == "chord") != (callback is not None):
        raise ValueError("a chord needs a callback, and only a chord has one")
    signatures = [s for s in steps if isinstance(s, Signature)]
    if kind == "saga" and len(signatures) < len(steps):
        raise ValueError("a saga's steps are tasks: workflows do not nest inside a saga")
    if kind != "saga" and any(s.compensate is not None for s in signatures):
        raise ValueError("only a saga's steps have compensations")
    if any(s.compensate is not None and s.compensate.compensate is not None for s in signatures):
        raise ValueError("a compensation has no compensation of its own")


def measure(steps: list[Any]) -> tuple[int, int]:
    """(tasks in ``steps`` down the tree, chords' callbacks aside; levels of nesting below)."""
    tasks, depth = 0, 0
    for step in steps:
        if isinstance(step, NestedWorkflow):
            inner_tasks, inner_depth = measure(step.steps)
            tasks, depth = tasks + inner_tasks, max(depth, inner_depth + 1)
        else:
            tasks += 1
    return tasks, depth


class Workflow(_Message):
    """A chain, group, chord or saga, published on ``P/workflows`` (docs/workflows.md)."""

    id: str = Field(pattern=WORKFLOW_ID_PATTERN, description="1-100 characters of A-Z a-z 0-9 _ . : -; unique")
    kind: WorkflowKind = Field(description="chain, group, chord or saga")
    steps: list[Step] = Field(min_length=1, max_length=MAX_WORKFLOW_STEPS,
                              description="the steps (chain, saga) or members (group, chord), in order: tasks, "
                                          "or (not in a saga) chains, groups and chords nested")
    callback: Signature | None = Field(default=None, description="a chord's callback (chord only, required)")
    reply_to: str | None = Field(default=None, min_length=1, max_length=512,
                                 description="topic that receives the workflow's final status event")
    correlation: str | None = Field(default=None, max_length=1024, description="echoed in the workflow's events")
    receipt_to: str | None = Field(default=None, min_length=1, max_length=512,
                                   description="topic that receives the coordinator's receipt (its id in a "
                                               "Receipt) once it recorded the workflow, or found it recorded")

    @field_validator("reply_to", "receipt_to")
    @classmethod
    def _reply_to_is_a_topic(cls, value: str | None, info: ValidationInfo) -> str | None:
        return plain_topic(value, str(info.field_name))

    @model_validator(mode="after")
    def _shape(self) -> Workflow:
        _check_shape(self.kind, self.steps, self.callback)
        tasks, depth = measure(self.steps)
        if tasks > MAX_WORKFLOW_STEPS:
            raise ValueError(f"{tasks} tasks in the steps: at most {MAX_WORKFLOW_STEPS}, counted down nested workflows")
        if depth > MAX_WORKFLOW_DEPTH:
            raise ValueError(f"workflows nested {depth} deep: at most {MAX_WORKFLOW_DEPTH}")
        return self
