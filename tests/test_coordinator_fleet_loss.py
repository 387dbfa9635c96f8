"""A whole fleet lost at once (a network cut between the workers and the broker): every worker's
Last Will arrives together, and each lost worker's tasks are made ready again (attempt 2, waiting
for a live worker), found through the records' index by worker (``Records.held_by``), not a pass
over every live record per worker.

That is counted, not timed: the live records are wrapped in a mapping that counts the passes over
all of them (a pass per Last Will would be 3,000; a wall-clock limit of 20 s passed such a pass at
this size in 1.9 s, and failed the indexed code at 23.7 s on a loaded machine).

The coordinator runs for real (loop thread, handlers, SQLite store) with the recording connection
of tests/test_coordinator_outage.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from mqtt_tasks import Settings
from mqtt_tasks.coordinator import Coordinator
from mqtt_tasks.store.sqlite import SQLiteStore
from mqtt_tasks.transport import Message
from tests.brokers import wait_until
from tests.test_coordinator_outage import PREFIX, TOPICS, Recorder

WORKERS = 3000


class PassCounter(dict):  # type: ignore[type-arg]
    """The coordinator's live records, counting every pass over all of them."""

    passes = 0

    def values(self):  # type: ignore[no-untyped-def, override]
        self.passes += 1
        return super().values()

    def items(self):  # type: ignore[no-untyped-def, override]
        self.passes += 1
        return super().items()

    def keys(self):  # type: ignore[no-untyped-def, override]
        self.passes += 1
        return super().keys()

    def __iter__(self):  # type: ignore[no-untyped-def]
        self.passes += 1
        return super().__iter__()


def test_every_task_of_3000_workers_lost_at_once_is_dispatched_again(tmp_path: Path) -> None:
    conn = Recorder()
    store = SQLiteStore(str(tmp_path / "tasks.db"))
    coordinator = Coordinator(Settings.from_url("mqtt://127.0.0.1:1", prefix=PREFIX), store,
                              connection=conn)  # type: ignore[arg-type]
    coordinator.start()
    coordinator.connected(True)
    mid = 0

    def feed(topic: str, body: dict[str, object], retain: bool = False) -> None:
        nonlocal mid
        mid += 1
        coordinator.receive(Message(topic, json.dumps(body).encode(), 1, retain, mid, 0))

    try:
        now = time.time()
        for i in range(WORKERS):
            feed(TOPICS.worker(f"w{i}"), {"worker": f"w{i}", "state": "online", "queues": ["default"],
                                          "concurrency": 1, "free": 1, "tasks": [], "ts": now, "heartbeat_s": 30})
            feed(TOPICS.tasks("default"), {"id": f"t{i}", "task": "noop"})
            feed(TOPICS.status(f"t{i}"), {"id": f"t{i}", "state": "started", "attempt": 1, "worker": f"w{i}",
                                          "ts": now})
        wait_until(lambda: len(conn.acked) == mid, 30, message="the fleet's tasks were not all recorded")
        records = coordinator._records  # the one reach inside: what a Last Will costs is the point
        live = records.live = PassCounter(records.live)
        for i in range(WORKERS):
            feed(TOPICS.worker(f"w{i}"), {"worker": f"w{i}", "state": "offline", "ts": now}, retain=False)
        wait_until(lambda: len(conn.acked) == mid, 60, message="the Last Wills were not all handled")
        stored = [store.get(f"t{i}") for i in range(WORKERS)]
        again = [r for r in stored if r is not None and r.attempt == 2 and r.worker is None]
        assert len(again) == WORKERS, f"{WORKERS - len(again)} tasks not made ready for a second attempt"
        print(f"\npasses over the live records for {WORKERS} Last Wills: {live.passes}")
        assert live.passes < WORKERS // 30, f"{live.passes} passes over every live record for {WORKERS} Last Wills"
    finally:
        coordinator.stop()


def test_stats_of_a_fleet_of_10000_fits_the_payload_cap(tmp_path: Path) -> None:
    conn = Recorder()
    coordinator = Coordinator(Settings.from_url("mqtt://127.0.0.1:1", prefix=PREFIX),
                              SQLiteStore(str(tmp_path / "tasks.db")), connection=conn)  # type: ignore[arg-type]
    coordinator.start()
    coordinator.connected(True)
    try:
        now = time.time()
        for i in range(10_000):
            body = {"worker": f"w{i:05d}", "state": "online", "queues": ["default"], "concurrency": 2, "free": 1,
                    "tasks": [], "ts": now, "heartbeat_s": 30}
            coordinator.receive(Message(TOPICS.worker(f"w{i:05d}"), json.dumps(body).encode(), 1, False, i + 1, 0))
        wait_until(lambda: len(conn.acked) == 10_000, 30, message="the heartbeats were not all handled")
        reply_to = TOPICS.replies("stats")
        request = {"op": "stats", "reply_to": reply_to, "correlation": "c"}
        coordinator.receive(Message(TOPICS.rpc, json.dumps(request).encode(), 1, False, 10_001, 0))
        answer = wait_until(lambda: (conn.on(reply_to) or [None])[-1], 10, message="no answer to stats")
        assert answer["ok"] is True, answer
        assert answer["workers_total"] == 10_000 and answer["workers_by_state"] == {"online": 10_000}
        assert answer["free_slots"] == 10_000
        assert len(answer["workers"]) == 1000 and "w00000" in answer["workers"] and "w09999" not in answer["workers"]
    finally:
        coordinator.stop()


def test_the_queued_index_follows_the_records(tmp_path: Path) -> None:
    """``Records.queued_in``, which a Last Will asks instead of a pass over every live record, holds
    exactly the live queued records of the queues asked for."""
    conn = Recorder()
    coordinator = Coordinator(Settings.from_url("mqtt://127.0.0.1:1", prefix=PREFIX),
                              SQLiteStore(str(tmp_path / "tasks.db")), connection=conn)  # type: ignore[arg-type]
    coordinator.start()
    coordinator.connected(True)
    records = coordinator._records
    try:
        for mid, (topic, body) in enumerate([
                (TOPICS.tasks("default"), {"id": "a", "task": "noop"}),
                (TOPICS.tasks("default"), {"id": "b", "task": "noop"}),
                (TOPICS.tasks("other"), {"id": "c", "task": "noop"}),
                (TOPICS.status("a"), {"id": "a", "state": "started", "attempt": 1, "worker": "w", "ts": time.time()}),
        ], start=1):
            coordinator.receive(Message(topic, json.dumps(body).encode(), 1, False, mid, 0))
        wait_until(lambda: len(conn.acked) == 4, 30, message="the messages were not all handled")
        assert [r.id for r in records.queued_in(["default"])] == ["b"]
        assert sorted(r.id for r in records.queued_in(["default", "other", "none"])) == ["b", "c"]
    finally:
        coordinator.stop()
