"""An in-memory store: live records, plus a bounded window of finished ones."""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

from .base import Store, TaskRecord
from .listing import Key, TaskFilter, select
from .schedules import ScheduleRecord
from .workflows import WorkflowRecord


class MemoryStore(Store):
    """Nothing survives the process. Finished records beyond ``max_finished`` are forgotten."""

    def __init__(self, max_finished: int = 100_000) -> None:
        self.max_finished = max_finished
        self._live: dict[str, TaskRecord] = {}
        self._finished: OrderedDict[str, TaskRecord] = OrderedDict()
        self._pending: dict[str, TaskRecord] = {}
        self._schedules: dict[str, ScheduleRecord] = {}
        self._pending_schedules: dict[str, ScheduleRecord | None] = {}  # None: removed
        self._workflows: dict[str, WorkflowRecord] = {}
        self._pending_workflows: dict[str, WorkflowRecord] = {}
        self._windows: dict[str, dict[str, Any]] = {}
        self._pending_windows: dict[str, dict[str, Any] | None] = {}  # None: forgotten
        self._rollouts: dict[str, dict[str, Any]] = {}
        self._pending_rollouts: dict[str, dict[str, Any]] = {}

    def put(self, record: TaskRecord) -> None:
        self._pending[record.id] = record

    def commit(self) -> int:
        written = len(self._pending)
        for record in self._pending.values():
            snapshot = copy.deepcopy(record)
            if snapshot.terminal:
                self._live.pop(snapshot.id, None)
                self._finished[snapshot.id] = snapshot
                self._finished.move_to_end(snapshot.id)
                while len(self._finished) > self.max_finished:
                    self._finished.popitem(last=False)
            else:
                self._finished.pop(snapshot.id, None)
                self._live[snapshot.id] = snapshot
        self._pending.clear()
        rollouts, self._pending_rollouts = self._pending_rollouts, {}
        self._rollouts.update(rollouts)
        return (written + self._commit_schedules() + self._commit_workflows() + self._commit_windows()
                + len(rollouts))

    def _commit_workflows(self) -> int:
        for workflow in self._pending_workflows.values():
            self._workflows[workflow.id] = copy.deepcopy(workflow)
        written, self._pending_workflows = len(self._pending_workflows), {}
        return written

    def put_workflow(self, workflow: WorkflowRecord) -> None:
        self._pending_workflows[workflow.id] = workflow

    def get_workflow(self, workflow_id: str) -> WorkflowRecord | None:
        workflow = self._pending_workflows.get(workflow_id) or self._workflows.get(workflow_id)
        return copy.deepcopy(workflow) if workflow is not None else None

    def list_workflows(self, state: str | None = None, limit: int = 100) -> list[WorkflowRecord]:
        self.commit()
        found = [w for w in self._workflows.values() if state is None or w.state == state]
        found.sort(key=lambda w: w.updated, reverse=True)
        return [copy.deepcopy(w) for w in found[:limit]]

    def _commit_windows(self) -> int:
        for bucket, window in self._pending_windows.items():
            if window is None:
                self._windows.pop(bucket, None)
            else:
                self._windows[bucket] = copy.deepcopy(window)
        written, self._pending_windows = len(self._pending_windows), {}
        return written

    def put_rate_window(self, bucket: str, window: dict[str, Any] | None) -> None:
        self._pending_windows[bucket] = window

    def load_rate_windows(self) -> dict[str, dict[str, Any]]:
        self.commit()
        return copy.deepcopy(self._windows)

    def put_rollout(self, rollout_id: str, data: dict[str, Any]) -> None:
        self._pending_rollouts[rollout_id] = copy.deepcopy(data)

    def load_rollouts(self) -> list[dict[str, Any]]:
        self.commit()
        return sorted(copy.deepcopy(list(self._rollouts.values())), key=lambda r: r.get("created", 0.0))

    def _commit_schedules(self) -> int:
        for name, schedule in self._pending_schedules.items():
            if schedule is None:
                self._schedules.pop(name, None)
            else:
                self._schedules[name] = copy.deepcopy(schedule)
        written, self._pending_schedules = len(self._pending_schedules), {}
        return written

    def put_schedule(self, schedule: ScheduleRecord) -> None:
        self._pending_schedules[schedule.name] = schedule

    def delete_schedule(self, name: str) -> None:
        self._pending_schedules[name] = None

    def load_schedules(self) -> list[ScheduleRecord]:
        self.commit()
        return [copy.deepcopy(self._schedules[name]) for name in sorted(self._schedules)]

    def get(self, task_id: str) -> TaskRecord | None:
        record = self._pending.get(task_id) or self._live.get(task_id) or self._finished.get(task_id)
        return copy.deepcopy(record) if record is not None else None

    def load_live(self) -> list[TaskRecord]:
        self.commit()
        return sorted((copy.deepcopy(r) for r in self._live.values()), key=lambda r: r.created)

    def list_tasks(self, state: str | None = None, limit: int = 100, *, queue: str | None = None,
                   task: str | None = None, before: Key | None = None) -> list[TaskRecord]:
        self.commit()
        where = TaskFilter(state, queue, task, before)
        return [copy.deepcopy(r) for r in select((*self._live.values(), *self._finished.values()), where, limit)]

    def counts(self) -> dict[str, int]:
        self.commit()
        out: dict[str, int] = {}
        for record in (*self._live.values(), *self._finished.values()):
            out[record.state] = out.get(record.state, 0) + 1
        return out
