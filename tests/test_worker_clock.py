"""Where time is judged (issue 13, item 2): a worker judges an absolute ``expires_at`` by the
fleet's clock, the coordinator's, read from its live presence; never by its own wall clock while
it has a reading, and not at all while it awaits one (it hands such a task to the coordinator).

The policy with fake clocks, then the worker's and the coordinator's receive paths with a
recording connection injected (no broker). The same faults on real processes are in
tests/test_faults.py (``test_a_worker_with_a_wrong_clock_judges_expiry_right``).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from mqtt_tasks import Settings, TaskApp
from mqtt_tasks.coordinator import Coordinator
from mqtt_tasks.coordinator.loop import PRESENCE_EVERY
from mqtt_tasks.protocol.validate import TaskData
from mqtt_tasks.transport import Message
from mqtt_tasks.worker import Worker
from mqtt_tasks.worker.fleet_clock import FleetClock
from mqtt_tasks.worker.intake import judge
from tests.brokers import wait_until
from tests.test_fuzz import MAX_PAYLOAD, PREFIX, TOPICS, ConnectingRecorder, RecordingConnection


class Fake:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# -- the policy ----------------------------------------------------------------------------------
def test_the_least_delayed_reading_sets_the_offset_and_the_wall_clock_is_not_read_once_read() -> None:
    wall, mono = Fake(1090.0), Fake(50.0)  # this host's wall clock is 90 s fast
    clock = FleetClock(wall, mono)
    assert clock.offset is None and clock.now() == 1090.0  # no reading: its own clock
    assert clock.observe(1000.0 - 0.2, ("c", 1), 50.0)      # delayed 0.2 s: low
    assert not clock.observe(1000.0, ("c", 1), 50.0)        # the least delayed wins, delayed or not after
    assert not clock.observe(999.5, ("c", 1), 50.0)
    assert clock.offset == 950.0 and clock.now() == 1000.0 and clock.skew() == 90.0
    wall.t, mono.t = 5.0, 60.0  # the wall clock is stepped: nothing moves
    assert clock.now() == 1010.0 == clock.now_or_none()


def test_a_new_coordinator_starts_its_readings_afresh_and_old_ones_age_out() -> None:
    clock = FleetClock(Fake(0.0), Fake(0.0))
    clock.observe(100.0, ("c", 1), 0.0)
    assert clock.observe(40.0, ("c", 2), 0.0) and clock.now() == 40.0  # another pid: another clock
    for _ in range(8):
        clock.observe(30.0, ("c", 2), 0.0)
    assert clock.now() == 30.0  # the coordinator's clock was stepped back: the window forgets


def test_while_a_reading_is_awaited_absolute_expiry_is_not_judged_here() -> None:
    wall, mono = Fake(500.0), Fake(0.0)
    clock = FleetClock(wall, mono, wait=5.0)
    assert clock.now_or_none() == 500.0  # no coordinator online: its own clock
    clock.expect()
    assert clock.now_or_none() is None and clock.now() == 500.0
    mono.t = 5.1  # a coordinator that sends no reading (an older version): its own clock again
    assert clock.now_or_none() == 500.0
    clock.expect()
    clock.give_up_waiting()  # the coordinator went offline: nobody to hand it to
    assert clock.now_or_none() == 500.0
    clock.expect()
    clock.observe(800.0, ("c", 1), mono.t)
    assert clock.now_or_none() == 800.0


def test_judge_hands_on_what_it_cannot_judge() -> None:
    t = TaskData({"id": "t1", "task": "add", "expires_at": 100.0})
    assert judge(t, None, {"add"}, clock=lambda: None) == "unsure"
    assert judge(TaskData({"id": "t1", "task": "add"}), None, {"add"}, clock=lambda: None) is None


# -- the worker's receive path -------------------------------------------------------------------
class WorkerHarness:
    def __init__(self) -> None:
        self.app = TaskApp(settings=Settings.from_url("mqtt://127.0.0.1:1", prefix=PREFIX, max_payload=MAX_PAYLOAD))
        self.app.task(name="echo")(lambda x: x)
        self.conn = RecordingConnection(MAX_PAYLOAD)
        self.worker = Worker(self.app, worker_id="clock-w", concurrency=2, connection=self.conn)  # type: ignore[arg-type]
        self.mid = 0

    def presence(self, ts: float, *, retain: bool, pid: int = 1) -> None:
        body = {"state": "online", "ts": ts, "client": "coord", "pid": pid}
        self.worker.receive(Message(TOPICS.coordinator, json.dumps(body).encode(), 1, retain, 0, 0))

    def outcome(self, expiry: int | None = None, **fields: Any) -> dict[str, Any]:
        self.mid += 1
        ident = f"t{self.mid}"
        payload = json.dumps({"id": ident, "task": "echo", "args": [1], **fields}).encode()
        start = len(self.conn.published)
        self.worker.receive(Message(TOPICS.tasks("default"), payload, 1, False, self.mid, 0, expiry=expiry))
        states: list[dict[str, Any]] = []

        def settled() -> bool:
            states[:] = [json.loads(p) for t, p in self.conn.since(start) if t == TOPICS.status(ident)]
            return any(s["state"] != "started" for s in states)

        wait_until(settled, timeout=5, interval=0.001, message=f"no outcome for {ident}")
        return next(s for s in states if s["state"] != "started")


@pytest.fixture
def wh() -> Any:
    h = WorkerHarness()
    yield h
    h.worker.stop()


def test_a_worker_90s_fast_judges_by_the_coordinators_clock(wh: WorkerHarness) -> None:
    fast = time.time() + 90  # this worker's view of the coordinator: what a 90 s fast host computes
    wh.presence(time.time() - 3600, retain=True)  # retained: an old presence, no reading
    deferred = wh.outcome(expires_at=time.time() + 60)
    assert deferred["state"] == "deferred" and deferred["body"]["expires_at"] > time.time()
    assert wh.outcome(expiry=30)["state"] == "succeeded"  # relative expiry needs no common clock
    wh.presence(fast - 90, retain=False)  # a live presence: the coordinator's clock, read
    assert wh.outcome(expires_at=time.time() + 60)["state"] == "succeeded"
    assert wh.outcome(expires_at=time.time() - 1)["state"] == "expired"
    wh.presence(time.time() - 90, retain=False, pid=2)  # a new coordinator, 90 s behind: its clock rules
    assert wh.outcome(expires_at=time.time() - 1)["state"] == "succeeded"


def test_without_a_coordinator_a_worker_judges_by_its_own_clock(wh: WorkerHarness) -> None:
    assert wh.outcome(expires_at=time.time() + 60)["state"] == "succeeded"
    assert wh.outcome(expires_at=time.time() - 1)["state"] == "expired"


# -- the coordinator's side: readings of its clock ---------------------------------------------------
class Recorder(ConnectingRecorder):
    def __init__(self) -> None:
        super().__init__(MAX_PAYLOAD)
        self.retained: list[bool] = []

    def publish(self, topic: str, payload: bytes, **options: Any) -> int:
        self.retained.append(bool(options.get("retain")))
        return super().publish(topic, payload, **options)

    def readings(self) -> list[float]:
        with self._lock:
            return [json.loads(p)["ts"] for (t, p), r in zip(self.published, self.retained, strict=True)
                    if t == TOPICS.coordinator and not r]


def test_the_coordinator_sends_a_reading_to_a_worker_that_joins_and_every_so_often() -> None:
    clock = Fake(1000.0)
    conn = Recorder()
    coordinator = Coordinator(Settings.from_url("mqtt://127.0.0.1:1", prefix=PREFIX), connection=conn,  # type: ignore[arg-type]
                              clock=clock, tick_s=0.01).start()
    try:
        coordinator.connected(True)
        wait_until(lambda: len(conn.readings()) == 1, timeout=5, message="no reading after connecting")
        beat = {"worker": "w1", "state": "online", "ts": 1.0, "queues": ["default"], "concurrency": 1,
                "heartbeat_s": 10.0, "tasks": [], "free": 1}
        coordinator.receive(Message(TOPICS.worker("w1"), json.dumps(beat).encode(), 1, True, 1, 0))
        coordinator.receive(Message(TOPICS.worker("w1"), json.dumps(beat).encode(), 1, False, 2, 0))
        wait_until(lambda: len(conn.readings()) == 2, timeout=5, message="no reading for the worker that joined")
        coordinator.receive(Message(TOPICS.worker("w1"), json.dumps(beat).encode(), 1, False, 3, 0))
        wait_until(lambda: len(conn.acked) == 3, timeout=5)
        clock.t += PRESENCE_EVERY - 1
        coordinator.receive(Message(TOPICS.worker("w1"), json.dumps(beat).encode(), 1, False, 4, 0))
        wait_until(lambda: len(conn.acked) == 4, timeout=5)
        assert len(conn.readings()) == 2  # a live worker is not told again
        clock.t += 1
        wait_until(lambda: len(conn.readings()) == 3, timeout=5, message="no periodic reading")
        assert conn.readings() == [1000.0, 1000.0, 1000.0 + PRESENCE_EVERY]
    finally:
        coordinator.stop()
