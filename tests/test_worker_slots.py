"""The worker's slot policy and intake verdicts with a fake clock: no broker, no threads."""

from __future__ import annotations

from typing import Any

from mqtt_tasks.protocol.validate import TaskData
from mqtt_tasks.transport import Message
from mqtt_tasks.worker.intake import apply_message_expiry, judge
from mqtt_tasks.worker.slots import MAX_QUEUED_QOS0, Slots, Waiting

DEFER_AFTER = 0.25


def task(task_id: str = "t1", **fields: Any) -> TaskData:
    return TaskData({"id": task_id, "task": "add", **fields})


def waiting(task_id: str, since: float, qos: int = 1, **fields: Any) -> Waiting:
    return Waiting(Message("p/tasks/default", b"{}", qos, False, 1, 0), task(task_id, **fields), since)


def full(concurrency: int = 1, now: float = 0.0) -> Slots:
    slots = Slots(concurrency, DEFER_AFTER, now)
    for _ in range(concurrency):
        slots.take(now)
    return slots


def test_taking_every_slot_marks_the_worker_full_and_freeing_one_times_the_pace() -> None:
    slots = Slots(2, DEFER_AFTER, now=0.0)
    slots.take(10.0)
    assert (slots.free, slots.last_release, slots.full_at) == (1, 10.0, None)  # pace timed from the first start
    slots.take(10.5)
    assert (slots.free, slots.full_at, slots.full_ago(11.0)) == (0, 10.5, 0.0)
    slots.give_back(11.0)
    assert slots.free == 1 and slots.release_gap == 0.2 * 1.0 and slots.full_ago(11.25) == 0.75


def test_a_line_that_moves_keeps_its_tasks_and_a_stuck_one_hands_them_all_on() -> None:
    slots = full()
    for i in range(3):
        slots.give_back(0.01 * (i + 1))  # a slot frees every 10 ms
        slots.take(0.01 * (i + 1))
    for i in range(3):
        slots.join(waiting(f"w{i}", since=0.03))
    assert not slots.defer_on_arrival(0.04)
    assert slots.take_overdue(0.04) == [] and len(slots.line) == 3
    stuck = 0.03 + DEFER_AFTER + 0.001  # no slot freed for longer than defer_after
    assert slots.expected_wait(0, 0.0, stuck) == float("inf") and slots.defer_on_arrival(stuck)
    assert [w.task.id for w in slots.take_overdue(stuck)] == ["w0", "w1", "w2"] and not slots.line


def test_only_the_tasks_behind_a_slow_pace_are_overdue() -> None:
    slots = full()
    slots.release_gap = 0.1  # a slot every 100 ms
    slots.last_release = 1.0
    for i in range(4):
        slots.join(waiting(f"w{i}", since=1.0))
    # expected wait at position p: waited + (p + 1) * 0.1; over 0.25 from position 2 on
    assert [w.task.id for w in slots.take_overdue(1.0)] == ["w2", "w3"]
    assert [w.task.id for w in slots.line] == ["w0", "w1"]


def test_expired_waiting_tasks_leave_the_line_and_the_counts_follow() -> None:
    slots = full()
    slots.join(waiting("a", 0.0, expires_at=100.0))
    slots.join(waiting("b", 0.0, qos=0))
    slots.join(waiting("c", 0.0, expires_at=200.0))
    assert (slots.expiring, slots.qos0) == (2, 1)
    assert slots.take_expired(99.0) == []
    assert [w.task.id for w in slots.take_expired(150.0)] == ["a"]
    assert [w.task.id for w in slots.line] == ["b", "c"] and (slots.expiring, slots.qos0) == (1, 1)
    assert slots.next().task.id == "b" and (slots.expiring, slots.qos0) == (1, 0)


def test_the_timer_wakes_for_the_next_expiry_or_the_next_look_at_the_line() -> None:
    slots = full()
    assert slots.next_check(wall=0.0, coordinator_online=True) is None  # nothing in line
    slots.join(waiting("a", 0.0, expires_at=10.0))
    assert slots.next_check(wall=9.0, coordinator_online=False) == 1.0
    assert slots.next_check(wall=9.0, coordinator_online=True) == DEFER_AFTER / 4


def test_qos0_line_is_bounded_and_take_all_empties_it() -> None:
    slots = full()
    for i in range(MAX_QUEUED_QOS0):
        slots.join(waiting(f"q{i}", 0.0, qos=0))
    assert slots.qos0_full()
    assert len(slots.take_all()) == MAX_QUEUED_QOS0 and not slots.line and not slots.qos0_full()


def test_intake_verdicts() -> None:
    registry = {"add"}
    assert judge(task(), None, registry) is None
    assert judge(task(attempt=2), 2, registry) == "duplicate"
    assert judge(task(attempt=2), 1, registry) is None  # another attempt of the same id: it may start
    assert judge(task(expires_at=99.0), None, registry, clock=lambda: 100.0) == "expired"
    assert judge(task(expires_at=101.0), None, registry, clock=lambda: 100.0) is None
    assert judge(TaskData({"id": "t1", "task": "nope"}), None, registry) == "unknown"


def test_message_expiry_becomes_the_earlier_deadline() -> None:
    t = task(expires_at=500.0)
    apply_message_expiry(t, Message("p/tasks/q", b"", 1, False, 1, 0, expiry=30), clock=lambda: 100.0)
    assert t.expires_at == 130.0
    apply_message_expiry(t, Message("p/tasks/q", b"", 1, False, 1, 0, expiry=60), clock=lambda: 100.0)
    assert t.expires_at == 130.0  # the later one changes nothing
