"""Cancel, progress and the step timer as pure policy (leases.py) with a fake clock; the task
context without a worker."""

from __future__ import annotations

import pytest

from mqtt_tasks import current_task
from mqtt_tasks.context import CURRENT, TaskContext
from mqtt_tasks.leases import (
    Announce,
    Cancel,
    LeasePolicy,
    new_record,
    next_due,
    on_cancel,
    on_progress,
    on_started,
    on_task,
    on_timer,
)
from mqtt_tasks.store.base import BACKLOG, CANCELLED, RETRYING, STARTED, SUCCEEDED

POLICY = LeasePolicy(default_heartbeat_s=1.0, lease_heartbeats=4, lease_slack=1.0)
BODY = {"id": "t1", "task": "work", "step_timeout": 5.0}


def started(now: float = 100.0):  # type: ignore[no-untyped-def]
    record = new_record("t1", now, body=BODY)
    on_task(record, BODY, now, POLICY)
    on_started(record, 1, "w1", 1.0, now, POLICY)
    return record


@pytest.mark.parametrize("state", ["queued", BACKLOG, RETRYING])
def test_a_task_not_running_ends_cancelled_at_once_with_a_reply(state: str) -> None:
    record = new_record("t1", 100.0, body=BODY)
    record.state = state
    effects = on_cancel(record, "not needed", 101.0)
    assert record.state == CANCELLED and record.reason == "not needed"
    assert effects == [Announce(CANCELLED, "not needed", final=True, reply=True, dead_letter=False)]
    assert next_due(record) is None


def test_a_running_task_ends_cancelled_and_its_worker_is_told_to_stop_it() -> None:
    record = started()
    effects = on_cancel(record, "operator", 101.0)
    assert effects[0] == Cancel("w1", "t1", 1, "operator", task_cancelled=True)
    assert record.state == CANCELLED
    # a heartbeat that still lists it repeats the cancel of the task, not a superseded-attempt one
    assert on_started(record, 1, "w1", 1.0, 102.0, POLICY) == [Cancel("w1", "t1", 1, "operator", task_cancelled=True)]


def test_a_finished_task_is_not_cancelled_and_an_old_attempt_s_event_changes_nothing() -> None:
    record = started()
    record.state = SUCCEEDED
    assert on_cancel(record, "late", 101.0) == [] and record.state == SUCCEEDED
    record = started()
    record.attempt = 2
    assert on_cancel(record, "stale", 101.0, attempt=1) == [] and record.state == STARTED


def test_progress_renews_the_lease_and_the_step_timer_and_is_kept() -> None:
    record = started(100.0)
    assert record.step_deadline == 105.0 and record.deadline == 105.0
    on_progress(record, 1, "w1", 1.0, {"fraction": 0.5, "message": "half"}, 104.0, POLICY)
    assert record.step_deadline == 109.0 and record.deadline == 109.0
    assert record.progress == {"fraction": 0.5, "message": "half", "attempt": 1, "ts": 104.0}
    on_started(record, 1, "w1", 1.0, 108.0, POLICY)  # a heartbeat renews the lease, not the step timer
    assert record.deadline == 113.0 and record.step_deadline == 109.0 and next_due(record) == 109.0


def test_the_step_timer_stops_a_hung_attempt_and_tries_again() -> None:
    record = started(100.0)
    assert on_timer(record, 104.9, POLICY) == []
    effects = on_timer(record, 105.0, POLICY)
    assert effects[0] == Cancel("w1", "t1", 1, "no progress within its step_timeout of 5s")
    assert record.state == BACKLOG and record.attempt == 2 and record.failures == 1
    assert record.step_deadline is None


def test_without_step_timeout_there_is_no_step_timer() -> None:
    record = new_record("t2", 100.0, body={"id": "t2", "task": "work"})
    on_started(record, 1, "w1", 1.0, 100.0, POLICY)
    assert record.step_deadline is None and next_due(record) == record.deadline


def test_current_task_is_none_outside_a_body_and_progress_is_checked() -> None:
    assert current_task() is None
    reports: list[tuple[float | None, str | None]] = []
    ctx = TaskContext("t1", "work", 1, "default", "w1", lambda c, f, m: reports.append((f, m)))
    token = CURRENT.set(ctx)
    try:
        assert current_task() is ctx
        ctx.progress(0.5, "half")
        ctx.progress(message="x" * 5000)
        for bad in (1.5, -0.1, float("nan"), True, "0.5"):
            with pytest.raises(ValueError):
                ctx.progress(bad)  # type: ignore[arg-type]
    finally:
        CURRENT.reset(token)
    assert reports[0] == (0.5, "half") and reports[1][0] is None and len(reports[1][1] or "") == 1024
