"""The lease, retry and dispatch policy with a fake clock: no broker, no threads."""

from __future__ import annotations

import dataclasses

import pytest

from mqtt_tasks import leases
from mqtt_tasks.leases import Announce, Cancel, Enqueue, LeasePolicy, WorkerView
from mqtt_tasks.store.base import TaskRecord

P = LeasePolicy(lease_heartbeats=3, lease_slack=0.0, dispatch_timeout=5.0, timeout_grace=1.0,
                backoff_base=1.0, backoff_cap=8.0, default_max_attempts=3)
STRICT = dataclasses.replace(P, alone_from_loss=1)  # every suspect alone, from its first loss
BODY = {"id": "t1", "task": "add", "args": [1, 2], "queue": "q", "attempt": 1}


def fresh(now: float = 0.0, **body: object) -> TaskRecord:
    r = leases.new_record("t1", now, body={**BODY, **body})
    leases.on_task(r, {**BODY, **body}, now, P)
    return r


def test_seen_task_waits_for_a_worker_then_is_dispatched_again_with_attempt_plus_one() -> None:
    r = fresh()
    assert r.state == "queued" and r.deadline == 5.0
    assert leases.on_timer(r, 4.9, P) == []
    assert leases.on_timer(r, 5.0, P) == [Enqueue("t1")]
    assert (r.state, r.attempt, r.failures) == ("backlog", 2, 0)  # lost by the broker: not a failure


def test_own_redispatch_echo_and_redelivery_change_nothing() -> None:
    r = fresh()
    leases.on_started(r, 1, "w1", 1.0, 1.0, P)
    assert leases.on_task(r, BODY, 2.0, P) == []
    assert r.state == "started"
    assert leases.on_task(r, {**BODY, "attempt": 1}, 2.0, P) == [] and r.attempt == 1


def test_heartbeats_renew_the_lease_so_a_long_task_is_never_redispatched() -> None:
    r = fresh()
    leases.on_started(r, 1, "w1", 1.0, 0.0, P)
    for t in range(1, 100):  # 100 s of a task, heartbeat every second, lease 3 s
        leases.on_started(r, 1, "w1", 1.0, float(t), P)
        assert leases.on_timer(r, t + 0.5, P) == []
    assert r.state == "started" and r.attempt == 1 and len(r.history) == 1


def test_lease_expiry_makes_a_suspect_not_a_failure_until_it_runs_alone() -> None:
    r = fresh()
    leases.on_started(r, 1, "w1", 1.0, 0.0, STRICT)
    assert leases.on_timer(r, 2.9, STRICT) == []
    assert leases.on_timer(r, 3.0, STRICT) == [Enqueue("t1")]
    assert (r.state, r.attempt, r.failures, r.losses, r.worker) == ("backlog", 2, 0, 1, None)
    assert leases.is_suspect(r)
    leases.on_dispatched(r, "w2", 4.0, STRICT)
    leases.on_started(r, 2, "w2", 1.0, 4.0, STRICT)  # alone: its worker went silent running it only
    assert leases.on_timer(r, 7.0, STRICT) == [Enqueue("t1")]
    assert (r.attempt, r.failures, r.kills) == (3, 1, 1)


def test_neighbours_lost_with_a_worker_are_suspects_not_failures() -> None:
    """A worker killed by one of the four tasks it held: none of them is charged an attempt."""
    held = [fresh() for _ in range(4)]
    for r in held:
        leases.on_started(r, 1, "w1", 1.0, 0.0, P)
        assert leases.on_worker_lost(r, "w1", 0.1, P) == [Enqueue("t1")]
        assert (r.state, r.attempt, r.failures, r.losses) == ("backlog", 2, 0, 1)
        assert "suspect" in (r.reason or "")


def test_a_suspect_that_kills_its_worker_running_alone_is_convicted_and_ends_dead() -> None:
    r = fresh()
    leases.on_started(r, 1, "w0", 1.0, 0.0, STRICT)
    leases.on_worker_lost(r, "w0", 0.1, STRICT)  # among others: a suspect
    for attempt in (2, 3):
        leases.on_dispatched(r, f"w{attempt}", 1.0, STRICT)
        leases.on_started(r, attempt, f"w{attempt}", 1.0, 1.0, STRICT)
        assert leases.on_worker_lost(r, f"w{attempt}", 1.1, STRICT) == [Enqueue("t1")]
        assert r.failures == r.kills == attempt - 1
    leases.on_dispatched(r, "w4", 2.0, STRICT)
    leases.on_started(r, 4, "w4", 1.0, 2.0, STRICT)
    effects = leases.on_worker_lost(r, "w4", 2.1, STRICT)
    assert (r.state, r.failures, r.kills, r.losses) == ("dead", 3, 3, 4)
    assert (r.reason or "").startswith("killed its worker 3 times running alone")
    assert effects == [Announce("dead", r.reason or "", final=True, reply=True, dead_letter=True)]


def test_a_suspect_lost_before_it_started_is_not_convicted_but_losses_are_bounded() -> None:
    """Dispatched alone, it waited for its worker's running tasks, and one of them killed it."""
    r = fresh()
    leases.on_started(r, 1, "w0", 1.0, 0.0, P)
    leases.on_worker_lost(r, "w0", 0.1, P)
    for n in range(2, P.max_losses):
        leases.on_dispatched(r, "w1", float(n), P)
        assert leases.on_worker_lost(r, "w1", n + 0.1, P) == [Enqueue("t1")]
        assert (r.failures, r.kills, r.losses) == (0, 0, n)
    leases.on_dispatched(r, "w1", 99.0, P)
    leases.on_worker_lost(r, "w1", 99.1, P)
    assert r.state == "dead" and f"lost with its worker {P.max_losses} times" in (r.reason or "")


def test_losing_another_workers_task_does_nothing() -> None:
    r = fresh()
    leases.on_started(r, 1, "w1", 1.0, 0.0, P)
    assert leases.on_worker_lost(r, "w2", 0.1, P) == [] and r.state == "started"


def test_timeout_plus_grace_redispatches_and_cancels_the_stuck_attempt() -> None:
    r = fresh(timeout=10.0)
    leases.on_started(r, 1, "w1", 1.0, 0.0, P)
    for t in range(1, 11):
        leases.on_started(r, 1, "w1", 1.0, float(t), P)
    effects = leases.on_timer(r, 11.0, P)
    assert effects[0] == Cancel("w1", "t1", 1, "time limit exceeded")
    assert r.attempt == 2 and r.state == "backlog"


def test_first_result_wins_late_results_are_duplicates_and_stale_workers_are_cancelled() -> None:
    r = fresh()
    leases.on_started(r, 1, "w1", 1.0, 0.0, P)
    leases.on_timer(r, 10.0, P)  # lease lost: attempt 2
    leases.on_dispatched(r, "w2", 10.0, P)
    assert leases.on_started(r, 1, "w1", 1.0, 10.5, P) == [Cancel("w1", "t1", 1, "superseded by attempt 2")]
    leases.on_started(r, 2, "w2", 1.0, 11.0, P)
    assert leases.on_succeeded(r, 2, "w2", 42, 12.0) == []
    assert r.state == "succeeded" and r.result == 42
    assert leases.on_succeeded(r, 1, "w1", 41, 13.0) == []
    assert r.result == 42 and r.duplicates == 1
    assert leases.on_succeeded(r, 2, "w2", 42, 13.0) == [] and r.duplicates == 1  # a redelivery
    assert leases.on_started(r, 1, "w1", 1.0, 14.0, P) == [Cancel("w1", "t1", 1, "task already succeeded")]


def test_an_older_attempt_finishing_first_wins_and_the_current_one_is_cancelled() -> None:
    r = fresh()
    leases.on_started(r, 1, "w1", 1.0, 0.0, P)
    leases.on_timer(r, 10.0, P)
    leases.on_started(r, 2, "w2", 1.0, 10.5, P)
    assert leases.on_succeeded(r, 1, "w1", 7, 11.0) == [Cancel("w2", "t1", 2, "attempt 1 succeeded")]
    assert r.winner == {"attempt": 1, "worker": "w1"}


def test_failures_retry_with_growing_jittered_backoff_then_die() -> None:
    r = fresh()
    rng = iter([0.0, 1.0]).__next__
    leases.on_started(r, 1, "w1", 1.0, 0.0, P)
    effects = leases.on_failed(r, 1, "w1", {"type": "E", "message": "x"}, False, 3, 1.0, P, rng)
    assert r.state == "retrying" and r.deadline == pytest.approx(1.5)  # base 1 s, jitter 0 -> half
    assert isinstance(effects[0], Announce) and effects[0].state == "retrying"
    assert leases.on_failed(r, 1, "w1", {"type": "E", "message": "x"}, False, 3, 1.1, P, rng) == []  # redelivery
    assert leases.on_timer(r, 1.4, P) == []
    assert leases.on_timer(r, 1.5, P) == [Enqueue("t1")] and r.attempt == 2
    leases.on_started(r, 2, "w1", 1.0, 2.0, P)
    leases.on_failed(r, 2, "w1", {"type": "E", "message": "x"}, False, 3, 3.0, P, rng)
    assert r.deadline == pytest.approx(5.0)  # second failure: 2 s ceiling, jitter 1 -> full
    leases.on_timer(r, 5.0, P)
    leases.on_started(r, 3, "w1", 1.0, 6.0, P)
    effects = leases.on_failed(r, 3, "w1", {"type": "E", "message": "x"}, False, 3, 7.0, P, rng)
    assert r.state == "dead" and effects[0].dead_letter and effects[0].reply  # type: ignore[union-attr]


def test_max_attempts_from_the_failed_event_applies() -> None:
    r = fresh()
    leases.on_started(r, 1, "w1", 1.0, 0.0, P)
    leases.on_failed(r, 1, "w1", None, False, 1, 1.0, P, lambda: 0.5)
    assert r.state == "dead"


def test_final_failure_from_a_worker_without_coordinator_is_dead_without_a_second_reply() -> None:
    r = fresh()
    effects = leases.on_failed(r, 1, "w1", None, True, 3, 1.0, P, lambda: 0.5)
    assert r.state == "dead" and effects[0].reply is False  # type: ignore[union-attr]


def test_backoff_is_capped_and_jittered() -> None:
    assert leases.backoff(P, 1, lambda: 0.0) == 0.5
    assert leases.backoff(P, 10, lambda: 1.0) == 8.0
    assert leases.backoff(P, 10, lambda: 0.0) == 4.0


def test_expiry_ends_a_task_the_coordinator_holds_but_not_a_started_one() -> None:
    r = leases.new_record("t1", 0.0)
    leases.on_deferred(r, 1, "w1", {**BODY, "expires_at": 3.0}, 0.0)
    assert leases.next_due(r) == 3.0 and leases.on_timer(r, 2.9, P) == []
    effects = leases.on_timer(r, 3.0, P)
    assert r.state == "expired" and effects[0].final and effects[0].reply  # type: ignore[union-attr]
    r2 = fresh(expires_at=3.0)
    leases.on_started(r2, 1, "w1", 1.0, 1.0, P)
    leases.on_started(r2, 1, "w1", 1.0, 3.0, P)
    assert leases.on_timer(r2, 3.5, P) == [] and r2.state == "started"


def test_a_retrying_task_expires_while_it_waits_out_its_backoff() -> None:
    r = fresh(expires_at=1.2)
    leases.on_started(r, 1, "w1", 1.0, 0.0, P)
    leases.on_failed(r, 1, "w1", None, False, 3, 1.0, P, lambda: 0.5)
    assert r.state == "retrying" and leases.next_due(r) == 1.2
    assert leases.on_timer(r, 1.2, P)[0] == Announce("expired", "expired before it could be tried again",
                                                     final=True, reply=True)


@pytest.mark.parametrize("dispatched", [False, True])
def test_expiry_cannot_race_the_start_of_a_task_a_worker_may_hold(dispatched: bool) -> None:
    """Issue 13: a worker judges "started in time" for what reached it and says `started` only
    after `started_after`; the coordinator must not record `expired` (and cancel the run) meanwhile."""
    r = fresh(expires_at=0.05)
    if dispatched:
        leases.on_deferred(r, 1, "w1", None, 0.01)
        leases.on_dispatched(r, "w2", 0.02, P)
    assert leases.next_due(r) == r.deadline  # not the expiry: a worker may hold it
    assert leases.on_timer(r, 0.05, P) == [] and leases.on_timer(r, 1.0, P) == []
    assert leases.on_started(r, 1, "w2" if dispatched else "w1", 1.0, 0.15, P) == []
    assert leases.on_timer(r, 0.5, P) == [] and r.state == "started"
    assert leases.on_succeeded(r, 1, r.worker, 3, 0.4) == [] and r.state == "succeeded"


def test_a_task_nobody_accounts_for_expires_a_dispatch_timeout_after_its_expiry() -> None:
    r = fresh(expires_at=1.0)
    assert leases.on_timer(r, 5.0, P) == [] and r.state == "queued"  # its dispatch timeout: expired by now,
    assert leases.next_due(r) == 6.0                                 # but a worker may still report it
    effects = leases.on_timer(r, 6.0, P)
    assert r.state == "expired" and effects[0].final and effects[0].reply  # type: ignore[union-attr]
    late = fresh(expires_at=7.0)  # expires after its dispatch timeout: dispatched again, then expires held
    assert leases.on_timer(late, 5.0, P) == [Enqueue("t1")] and leases.next_due(late) == 7.0


def test_after_the_coordinators_expiry_the_first_final_state_wins() -> None:
    r = fresh(expires_at=1.0)
    leases.on_timer(r, 5.0, P)
    leases.on_timer(r, 6.0, P)
    assert leases.on_started(r, 1, "w1", 1.0, 6.5, P) == [Cancel("w1", "t1", 1, "task already expired")]
    assert leases.on_succeeded(r, 1, "w1", 3, 7.0) == [] and leases.on_worker_event_final(
        r, "expired", 1, "w1", "expired", 7.1) == []
    assert (r.state, r.duplicates, r.result) == ("expired", 1, None)


def test_deferred_task_joins_the_backlog_and_stale_deferrals_are_ignored() -> None:
    r = leases.new_record("t1", 0.0)
    assert leases.on_deferred(r, 1, "w1", BODY, 0.0) == [Enqueue("t1")]
    assert r.state == "backlog" and r.body is not None
    leases.on_dispatched(r, "w2", 1.0, P)
    leases.on_started(r, 1, "w2", 1.0, 1.1, P)
    assert leases.on_deferred(r, 1, "w3", BODY, 1.2) == [] and r.state == "started"


def test_a_started_attempt_handed_back_past_the_grace_runs_again_as_the_next_attempt_without_a_failure() -> None:
    r = fresh()
    leases.on_started(r, 1, "w1", 1.0, 1.0, P)
    assert leases.on_handed_back(r, 1, "w1", BODY, "grace over", 2.0) == [Enqueue("t1")]
    assert (r.state, r.attempt, r.failures, r.worker) == ("backlog", 2, 0, None)
    assert leases.on_worker_lost(r, "w1", 2.1, P) == []  # its `offline` right after changes nothing
    leases.on_dispatched(r, "w2", 2.2, P)
    leases.on_started(r, 2, "w2", 1.0, 2.3, P)
    assert leases.on_handed_back(r, 1, "w1", BODY, "grace over", 2.4) == [] and r.state == "started"
    assert leases.on_handed_back(r, 2, "w3", BODY, "not its own", 2.5) == [] and r.worker == "w2"
    leases.on_succeeded(r, 2, "w2", 3, 3.0)
    assert leases.on_handed_back(r, 2, "w2", BODY, "too late", 3.1) == [] and r.state == "succeeded"


def test_a_late_result_of_an_attempt_handed_back_is_a_duplicate_once_the_next_attempt_won() -> None:
    r = fresh()
    leases.on_started(r, 1, "w1", 1.0, 1.0, P)
    leases.on_handed_back(r, 1, "w1", BODY, "grace over", 2.0)
    leases.on_dispatched(r, "w2", 2.1, P)
    leases.on_succeeded(r, 2, "w2", 3, 3.0)
    leases.on_succeeded(r, 1, "w1", 3, 3.5)
    assert (r.state, r.winner, r.duplicates) == ("succeeded", {"attempt": 2, "worker": "w2"}, 1)


def test_dispatched_then_worker_lost_is_a_suspect_and_a_dispatch_timeout_is_not() -> None:
    r = leases.new_record("t1", 0.0)
    leases.on_deferred(r, 1, "w1", BODY, 0.0)
    leases.on_dispatched(r, "w2", 1.0, P)
    assert leases.on_worker_lost(r, "w2", 2.0, P) == [Enqueue("t1")]
    assert (r.attempt, r.failures, r.losses) == (2, 0, 1)
    leases.on_dispatched(r, "w3", 3.0, P)
    assert leases.on_timer(r, 8.0, P) == [Enqueue("t1")]
    assert (r.attempt, r.failures, r.losses) == (3, 0, 1)


def test_a_queued_task_lost_while_a_worker_of_its_queue_died_becomes_a_suspect() -> None:
    """A task that kills its worker before `started` leaves is only ever seen queued: when a
    worker of its queue died meanwhile, it is a suspect and runs alone next; a kill then, with
    its `started` acknowledged before the body ran, convicts it."""
    r = leases.new_record("t1", 0.0, body=BODY)
    leases.on_task(r, BODY, 0.0, STRICT)
    assert leases.on_timer(r, 6.0, STRICT) == [Enqueue("t1")]
    assert (r.attempt, r.failures, r.losses) == (2, 0, 0)  # lost in the broker, say: not the task's fault
    r2 = leases.new_record("t2", 0.0, body={**BODY, "id": "t2", "max_attempts": 1})
    leases.on_task(r2, {**BODY, "id": "t2", "max_attempts": 1}, 0.0, STRICT)
    assert leases.on_timer(r2, 6.0, STRICT, worker_died=True) == [Enqueue("t2")]
    assert (r2.attempt, r2.failures, r2.losses) == (2, 0, 1) and "went offline" in (r2.reason or "")
    leases.on_dispatched(r2, "w2", 7.0, STRICT)
    leases.on_started(r2, 2, "w2", 1.0, 7.1, STRICT)
    leases.on_worker_lost(r2, "w2", 7.5, STRICT)
    assert r2.state == "dead" and "killed its worker 1 time running alone" in (r2.reason or "")


def test_a_task_without_a_body_cannot_be_redispatched_and_ends_dead() -> None:
    r = leases.new_record("t1", 0.0)
    leases.on_started(r, 1, "w1", 1.0, 0.0, P)
    leases.on_worker_lost(r, "w1", 1.0, P)
    assert r.state == "dead" and "never seen" in (r.reason or "")


def test_pick_worker_prefers_free_slots_and_skips_stale_busy_or_other_queues() -> None:
    ws = [WorkerView("a", queues=("q",), free=1, heartbeat_s=1.0, last_seen=10.0),
          WorkerView("b", queues=("q",), free=3, heartbeat_s=1.0, last_seen=10.0),
          WorkerView("c", queues=("other",), free=9, heartbeat_s=1.0, last_seen=10.0),
          WorkerView("d", queues=("q",), free=9, heartbeat_s=1.0, last_seen=1.0),
          WorkerView("e", state="draining", queues=("q",), free=9, heartbeat_s=1.0, last_seen=10.0)]
    best = leases.pick_worker(ws, "q", 10.5, P)
    assert best is not None and best.worker == "b"
    assert leases.pick_worker(ws, "none", 10.5, P) is None


def test_extend_after_a_restart_gives_leases_a_grace_period() -> None:
    r = fresh()
    leases.on_started(r, 1, "w1", 1.0, 0.0, P)
    leases.extend(r, 100.0, 5.0)
    assert leases.on_timer(r, 104.0, P) == []


def test_pick_worker_keeps_the_last_tasks_of_a_batch_off_a_slow_worker() -> None:
    fast = WorkerView("fast", queues=("q",), free=0, concurrency=2, heartbeat_s=1.0, last_seen=10.0, duration=0.02)
    slow = WorkerView("slow", queues=("q",), free=2, concurrency=2, heartbeat_s=1.0, last_seen=10.0, duration=0.2)
    assert leases.pick_worker([fast, slow], "q", 10.0, P, backlog=100) is slow  # plenty left: use it
    assert leases.pick_worker([fast, slow], "q", 10.0, P, backlog=3) is None  # the fast one frees up sooner
    assert leases.pick_worker([slow], "q", 10.0, P, backlog=1) is slow  # alone, slow is best
    leases.observe_duration(fast, 0.12)
    assert fast.duration == pytest.approx(0.04)


# -- a queued task that may have gone down with a worker (the dead worker never announced it) --------
def test_a_worker_death_puts_in_doubt_the_queued_tasks_of_its_queues_seen_before() -> None:
    r = fresh(now=10.0)
    assert leases.may_have_taken(r, ("q",), 11.0)
    assert not leases.may_have_taken(r, ("other",), 11.0)
    assert not leases.may_have_taken(fresh(now=12.0), ("q",), 11.0)  # seen after the death
    running = fresh(now=10.0)
    leases.on_started(running, 1, "w2", 0.5, 10.2, P)
    assert not leases.may_have_taken(running, ("q",), 11.0)  # a live worker holds it: its lease decides


def test_a_worker_shows_it_holds_nothing_unseen_by_a_heartbeat_with_room_for_one_interval() -> None:
    w = WorkerView("w2", queues=("q",), free=2, concurrency=4, heartbeat_s=0.5, last_seen=10.3, full_at=None)
    assert not leases.drained(w, 10.0, 10.4, P)  # a heartbeat 0.3 s after the task was seen: too soon
    w.last_seen = 10.5
    assert leases.drained(w, 10.0, 10.6, P)  # free for a whole interval since it was seen
    w.full_at = 12.0  # full again later (the task could sit in its line or its broker queue) ...
    w.last_seen = 12.3
    assert not leases.drained(w, 10.0, 12.4, P)
    w.last_seen = 12.5  # ... and free for an interval since
    assert leases.drained(w, 10.0, 12.6, P)
    w.last_seen = 1.0  # silent past its lease: whatever it holds is lost with it
    assert not leases.drained(w, 10.0, 12.6, P) and leases.gone(w, 12.6, P)
    w.last_seen = 0.0  # known only from its retained state: not known yet
    assert not leases.drained(w, 10.0, 12.6, P) and not leases.gone(w, 12.6, P)


def test_a_queued_task_is_lost_unseen_only_once_every_worker_of_its_queue_drained() -> None:
    r = fresh(now=10.0)
    busy = WorkerView("w2", queues=("q",), free=0, concurrency=4, heartbeat_s=0.5, last_seen=13.0, full_at=13.0)
    idle = WorkerView("w3", queues=("q",), free=4, concurrency=4, heartbeat_s=0.5, last_seen=13.0, full_at=None)
    assert not leases.lost_unseen(r, [busy, idle], 13.1, P)  # w2 is full: it may hold it in its line
    busy.full_at, busy.last_seen = 13.2, 13.7
    assert leases.lost_unseen(r, [busy, idle], 13.8, P)
    retained = WorkerView("w4", queues=("q",), free=4, concurrency=4, heartbeat_s=0.5, last_seen=0.0)
    assert not leases.lost_unseen(r, [busy, idle, retained], 13.8, P)  # not heard live yet: it may hold it
    dead = WorkerView("w1", state="offline", queues=("q",), heartbeat_s=0.5, last_seen=10.2)
    assert leases.lost_unseen(r, [busy, idle, dead], 13.8, P)
    assert leases.on_lost_unseen(r, 13.8, P) == [Enqueue("t1")]  # before its dispatch timeout (15)
    assert (r.attempt, r.losses, r.failures) == (2, 1, 0)  # a suspect, not charged


# -- a dispatch its worker never got (a leader killed between its commit and its publish) ---------
def test_a_dispatch_its_worker_shows_it_never_got_is_sent_again_within_a_heartbeat() -> None:
    r = fresh(now=10.0)
    leases.on_task(r, BODY, 10.0, P)
    r.state, r.body = "backlog", dict(BODY)
    leases.on_dispatched(r, "w2", 10.0, P)  # by the old leader; deadline 15
    w2 = WorkerView("w2", queues=("q",), free=4, concurrency=4, heartbeat_s=0.5, last_seen=0.0)
    assert not leases.dispatch_unseen(r, w2, 10.6, P)  # the new leader has heard only its retained state
    w2.last_seen = 10.3
    assert not leases.dispatch_unseen(r, w2, 10.4, P)  # a heartbeat too soon after the dispatch
    other = WorkerView("w3", queues=("q",), free=4, concurrency=4, heartbeat_s=0.5, last_seen=10.6)
    assert not leases.dispatch_unseen(r, other, 10.7, P)  # another worker's heartbeats say nothing of it
    w2.full_at, w2.last_seen = 10.4, 10.6  # full meanwhile: it may sit in its line
    assert not leases.dispatch_unseen(r, w2, 10.7, P)
    w2.last_seen = 10.9
    assert leases.dispatch_unseen(r, w2, 11.0, P)
    assert leases.on_dispatch_unseen(r, 11.0, P) == [Enqueue("t1")]
    assert (r.state, r.attempt, r.failures, r.losses) == ("backlog", 2, 0, 0)  # not a failure, not a suspect
    assert leases.on_started(r, 1, "w2", 0.5, 11.5, P) == [Cancel("w2", "t1", 1, "superseded by attempt 2")]


def test_a_dispatch_the_worker_lists_is_started_not_unseen() -> None:
    r = fresh(now=10.0)
    r.state, r.body = "backlog", dict(BODY)
    leases.on_dispatched(r, "w2", 10.0, P)
    leases.on_started(r, 1, "w2", 0.5, 10.9, P)  # listed in the heartbeat
    w2 = WorkerView("w2", queues=("q",), free=3, concurrency=4, heartbeat_s=0.5, last_seen=10.9)
    assert not leases.dispatch_unseen(r, w2, 11.0, P) and r.state == "started"


# -- group testing: a first loss re-runs with others, alone only from the second -------------------
def test_a_first_suspect_runs_with_others_and_a_crash_then_convicts_nobody() -> None:
    r = fresh()
    leases.on_started(r, 1, "w0", 1.0, 0.0, P)
    leases.on_worker_lost(r, "w0", 0.1, P)  # lost among others: a suspect
    assert leases.is_suspect(r) and not leases.runs_alone(r, P) and leases.runs_alone(r, STRICT)
    leases.on_dispatched(r, "w1", 1.0, P)
    leases.on_started(r, 2, "w1", 1.0, 1.0, P)  # with others: a crash now names nobody
    assert leases.on_worker_lost(r, "w1", 1.1, P) == [Enqueue("t1")]
    assert (r.failures, r.kills, r.losses) == (0, 0, 2) and leases.runs_alone(r, P)


def test_a_poison_task_is_convicted_one_crash_later_than_with_strict_isolation() -> None:
    crashes: dict[int, int] = {}
    for policy in (STRICT, P):
        r = fresh()
        n = 0
        while not r.terminal:  # it kills every worker it runs on
            n += 1
            leases.on_dispatched(r, f"w{n}", float(n), policy)
            leases.on_started(r, r.attempt, f"w{n}", 1.0, float(n), policy)
            leases.on_worker_lost(r, f"w{n}", n + 0.1, policy)
        assert r.state == "dead" and (r.reason or "").startswith("killed its worker 3 times running alone")
        crashes[policy.alone_from_loss] = n
    assert crashes == {1: 4, 2: 5}  # max_attempts convictions, after one loss (strict) or two
