"""The loop's commit cadence: a batch lingers after its first message, so messages that arrive
one at a time (1,000 tasks/s) cost one commit and one ack write per batch, and still no message is
acknowledged before the commit that records it.

The coordinator runs for real (loop thread, handlers, SQLite store) with the injected recording
connection of tests/test_coordinator_outage.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from mqtt_tasks import Settings
from mqtt_tasks.coordinator import Coordinator
from mqtt_tasks.store.sqlite import SQLiteStore
from mqtt_tasks.transport import Message
from tests.brokers import wait_until
from tests.test_coordinator_outage import PREFIX, TOPICS, Recorder


class CountingStore(SQLiteStore):
    """Counts the commits that wrote something, and the acks that were out when each began."""

    def __init__(self, path: str, conn: Recorder) -> None:
        super().__init__(path)
        self.conn = conn
        self.writes: list[tuple[int, int]] = []  # (records written, messages acked before the commit)
        self._lock = threading.Lock()

    def commit(self) -> int:
        acked_before = len(self.conn.acked)
        written = super().commit()
        if written:
            with self._lock:
                self.writes.append((written, acked_before))
        return written


def run(tmp_path: Path, linger_s: float, gap_s: float, count: int,
        linger_gap_s: float = 0.1) -> tuple[CountingStore, Recorder, float]:
    conn = Recorder()
    store = CountingStore(str(tmp_path / "tasks.db"), conn)
    coordinator = Coordinator(Settings.from_url("mqtt://127.0.0.1:1", prefix=PREFIX), store,
                              connection=conn, linger_s=linger_s,
                              linger_gap_s=linger_gap_s)  # type: ignore[arg-type]
    coordinator.start()
    coordinator.connected(True)
    try:
        t0 = time.monotonic()
        for mid in range(1, count + 1):
            body = b'{"id":"t%d","task":"add","args":[1,2]}' % mid
            coordinator.receive(Message(TOPICS.tasks("default"), body, 1, False, mid, 0))
            time.sleep(gap_s)  # the producer's pace, not a synchronisation
        wait_until(lambda: len(conn.acked) == count, 10, message="not every task was acknowledged")
        return store, conn, time.monotonic() - t0
    finally:
        coordinator.stop()


def test_messages_arriving_one_at_a_time_share_a_commit(tmp_path: Path) -> None:
    store, conn, _ = run(tmp_path, linger_s=0.5, gap_s=0.002, count=40)
    assert sum(w for w, _ in store.writes) == 40
    assert len(store.writes) <= 2, f"{len(store.writes)} commits for 40 messages 2 ms apart with a 0.5 s linger"
    committed = 0
    for written, acked_before in store.writes:
        assert acked_before <= committed, "a message was acknowledged before the commit that records it"
        committed += written


def test_without_linger_each_trickling_message_commits_alone(tmp_path: Path) -> None:
    store, _, _ = run(tmp_path, linger_s=0.0, gap_s=0.02, count=10)
    assert len(store.writes) >= 8, "the reference case: 20 ms apart, no linger, a commit each"


def test_a_gap_ends_the_linger(tmp_path: Path) -> None:
    """Messages 50 ms apart with a 5 ms gap: each its own batch, whatever the linger."""
    store, conn, _ = run(tmp_path, linger_s=1.0, gap_s=0.05, count=6, linger_gap_s=0.005)
    assert conn.acked == [1, 2, 3, 4, 5, 6]
    assert len(store.writes) >= 5, "a lone message waited out the whole linger"
