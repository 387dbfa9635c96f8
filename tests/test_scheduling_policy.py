"""Delayed tasks, priorities, retry and purge as pure policy: a fake clock, no broker."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from mqtt_tasks import leases
from mqtt_tasks.app import scheduling_fields
from mqtt_tasks.errors import ConfigError
from mqtt_tasks.leases import Announce, Enqueue, LeasePolicy
from mqtt_tasks.protocol.validate import TaskData
from mqtt_tasks.store.base import BACKLOG, CANCELLED, DEAD, EXPIRED, QUEUED, SCHEDULED, SUCCEEDED, TaskRecord
from mqtt_tasks.worker.intake import NOT_YET, judge

P = LeasePolicy(dispatch_timeout=10.0)
T0 = 1_000_000.0


def body(**fields: Any) -> dict[str, Any]:
    return {"id": "t1", "task": "work", "queue": "q", **fields}


def scheduled(not_before: float = T0 + 3600) -> TaskRecord:
    record = leases.new_record("t1", T0)
    effects = leases.on_task(record, body(not_before=not_before), T0, P)
    assert record.state == SCHEDULED
    assert effects == [Announce(SCHEDULED, effects[0].reason, next_at=not_before)]  # type: ignore[union-attr]
    return record


def test_a_task_with_not_before_ahead_is_held_until_then() -> None:
    record = scheduled(T0 + 3600)
    assert record.deadline == leases.next_due(record) == T0 + 3600 and record.worker is None
    assert leases.on_timer(record, T0 + 3599.9, P) == [] and record.state == SCHEDULED
    assert leases.on_timer(record, T0 + 3600, P) == [Enqueue("t1")]
    assert record.state == BACKLOG and record.attempt == 1
    assert [h["event"] for h in record.history] == [SCHEDULED, "due"]


def test_not_before_in_the_past_is_an_ordinary_task() -> None:
    record = leases.new_record("t1", T0)
    assert leases.on_task(record, body(not_before=T0 - 5), T0, P) == []
    assert record.state == QUEUED


def test_a_redelivery_or_a_worker_s_hand_over_changes_nothing_while_scheduled() -> None:
    record = scheduled()
    assert leases.on_task(record, body(not_before=T0 + 3600), T0 + 1, P) == []
    assert leases.on_deferred(record, 1, "w1", body(not_before=T0 + 3600), T0 + 2) == []
    assert record.state == SCHEDULED and record.deadline == T0 + 3600


def test_a_hand_over_seen_before_the_task_holds_it_too() -> None:
    record = leases.new_record("t1", T0, body=body(not_before=T0 + 60))
    effects = leases.on_deferred(record, 1, "w1", body(not_before=T0 + 60), T0)
    assert record.state == SCHEDULED and isinstance(effects[0], Announce)
    assert leases.on_task(record, body(not_before=T0 + 60), T0 + 1, P) == []  # the task arrives after
    assert record.state == SCHEDULED


def test_a_worker_s_hand_over_of_a_delayed_task_changes_only_what_the_coordinator_has_not_taken() -> None:
    record = scheduled(T0 + 1)
    leases.on_timer(record, T0 + 1, P)
    leases.on_dispatched(record, "w1", T0 + 1, P)
    assert leases.on_delayed_handover(record, 1, "w1", body(not_before=T0 + 1), T0 + 1.1) == []  # late: not twice
    assert record.state == "dispatched"
    unseen = leases.new_record("t1", T0, body=body(not_before=T0 + 60))  # the coordinator missed the task
    assert isinstance(leases.on_delayed_handover(unseen, 1, "w1", None, T0)[0], Announce)
    assert unseen.state == SCHEDULED
    due = leases.new_record("t1", T0)  # by the coordinator's clock it is due (the worker's reading lags)
    leases.on_task(due, body(not_before=T0 - 0.01), T0, P)
    assert leases.on_delayed_handover(due, 1, "w1", None, T0) == [Enqueue("t1")] and due.state == BACKLOG


def test_a_restart_does_not_move_a_scheduled_task() -> None:
    record = scheduled(T0 + 60)
    leases.extend(record, T0 + 59, P.reconnect_grace)
    assert record.deadline == T0 + 60


def test_expiry_before_not_before_ends_it_expired_at_its_expiry() -> None:
    record = leases.new_record("t1", T0)
    leases.on_task(record, body(not_before=T0 + 100, expires_at=T0 + 50), T0, P)
    assert leases.next_due(record) == T0 + 50
    effects = leases.on_timer(record, T0 + 50, P)
    assert record.state == EXPIRED and record.reason == "expired before its not_before time"
    assert isinstance(effects[0], Announce) and effects[0].final


def dead_record() -> TaskRecord:
    record = leases.new_record("t1", T0, body=body(expires_at=T0 + 5))
    record.state, record.attempt, record.failures, record.error = DEAD, 3, 3, {"type": "E", "message": "m"}
    record.note(attempt=3, event=DEAD, ts=T0)
    return record


def test_retry_runs_a_dead_task_again_as_a_new_attempt_with_its_history() -> None:
    record = dead_record()
    assert leases.retry_refusal(record) is None
    assert leases.on_retry(record, T0 + 10) == [Enqueue("t1")]
    assert record.state == BACKLOG and record.attempt == 4 and record.failures == 0
    assert record.error is None and record.winner is None
    assert [h["event"] for h in record.history] == [DEAD, "rerun", "requeued"]
    assert record.expires_at is None and "expires_at" not in (record.body or {})  # would expire it again


def test_retry_of_a_cancelled_task_still_ahead_of_its_not_before_holds_it_again() -> None:
    record = scheduled(T0 + 60)
    leases.on_purged(record, "q", T0)
    assert record.state == CANCELLED
    effects = leases.on_retry(record, T0 + 1)
    assert record.state == SCHEDULED and record.attempt == 2 and isinstance(effects[0], Announce)


@pytest.mark.parametrize(("state", "needle"), [(SUCCEEDED, "is succeeded"), (QUEUED, "still live"),
                                               (SCHEDULED, "still live")])
def test_retry_refuses_what_is_not_dead_cancelled_or_expired(state: str, needle: str) -> None:
    record = dead_record()
    record.state = state
    assert needle in (leases.retry_refusal(record) or "")


def test_retry_refuses_a_task_never_seen() -> None:
    record = leases.new_record("t1", T0)
    record.state = DEAD
    assert "never seen" in (leases.retry_refusal(record) or "")


def test_purge_cancels_only_what_the_coordinator_holds() -> None:
    record = scheduled()
    effects = leases.on_purged(record, "q", T0)
    assert record.state == CANCELLED and record.reason == "purged from queue q by an operator"
    assert isinstance(effects[0], Announce) and effects[0].final and effects[0].reply
    started = leases.new_record("t2", T0, body=body(id="t2"))
    leases.on_started(started, 1, "w1", 1.0, T0, P)
    assert leases.on_purged(started, "q", T0) == [] and started.state == "started"


def test_adopt_body_reads_not_before_and_priority() -> None:
    record = leases.new_record("t1", T0, body=body(not_before=T0 + 1, priority=8))
    assert (record.not_before, record.priority) == (T0 + 1, 8)


# -- the worker's verdict --------------------------------------------------------------------
def test_a_worker_hands_over_a_task_not_yet_due_by_the_fleet_s_clock() -> None:
    task = TaskData(body(not_before=T0 + 10))
    assert judge(task, None, {"work"}, lambda: T0) == NOT_YET
    assert judge(task, None, {"work"}, lambda: None) == NOT_YET  # the clock not read yet: not its call
    assert judge(task, None, {"work"}, lambda: T0 + 10) is None
    assert judge(task, None, {"work"}, lambda: T0, due=True) is None  # from its inbox: the coordinator judged


# -- the producer's fields ---------------------------------------------------------------------
def test_scheduling_fields() -> None:
    assert scheduling_fields(delay=30, now=T0) == {"not_before": T0 + 30}
    assert scheduling_fields(delay=0, now=T0) is None
    assert scheduling_fields(at=T0 + 5, priority=9, now=T0) == {"not_before": T0 + 5, "priority": 9}
    when = datetime.datetime.fromtimestamp(T0 + 60, tz=datetime.timezone.utc)
    assert scheduling_fields(at=when, now=T0) == {"not_before": T0 + 60}


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"delay": -1}, "in the past"), ({"at": T0 - 1}, "in the past"), ({"delay": 1, "at": T0 + 1}, "not both"),
    ({"priority": 10}, "0-9"), ({"priority": -1}, "0-9"), ({"delay": float("nan")}, "not a number"),
])
def test_scheduling_fields_refuse_bad_values(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        scheduling_fields(now=T0, **kwargs)
