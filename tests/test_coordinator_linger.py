"""The loop's commit cadence: under a stream (a message was waiting when the loop came back) a
batch lingers while messages keep coming, so messages that arrive one at a time (1,000 tasks/s)
cost one commit and one ack write per batch; a message that finds the loop idle is decided at
once; and no message is acknowledged before the commit that records it.

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

    def __init__(self, path: str, conn: Recorder, slow_first_s: float = 0.0) -> None:
        super().__init__(path)
        self.conn = conn
        self.slow_first_s = slow_first_s  # the first commit that writes takes this long: a stream builds up
        self.writes: list[tuple[int, int]] = []  # (records written, messages acked before the commit)
        self._lock = threading.Lock()

    def commit(self) -> int:
        acked_before = len(self.conn.acked)
        written = super().commit()
        if written and not self.writes:
            time.sleep(self.slow_first_s)  # stands in for a slow commit, not a synchronisation
        if written:
            with self._lock:
                self.writes.append((written, acked_before))
        return written


def run(tmp_path: Path, linger_s: float, gap_s: float, count: int, linger_gap_s: float = 0.1,
        slow_first_s: float = 0.0) -> tuple[CountingStore, Recorder, float]:
    conn = Recorder()
    store = CountingStore(str(tmp_path / "tasks.db"), conn, slow_first_s)
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
        wait_until(lambda: len(conn.acked) == count, 30, message="not every task was acknowledged")
        return store, conn, time.monotonic() - t0
    finally:
        coordinator.stop()


def test_a_stream_of_messages_arriving_one_at_a_time_shares_a_commit(tmp_path: Path) -> None:
    store, conn, _ = run(tmp_path, linger_s=0.5, gap_s=0.002, count=40, slow_first_s=0.05)
    assert sum(w for w, _ in store.writes) == 40
    assert len(store.writes) <= 3, f"{len(store.writes)} commits for 40 messages 2 ms apart with a 0.5 s linger"
    committed = 0
    for written, acked_before in store.writes:
        assert acked_before <= committed, "a message was acknowledged before the commit that records it"
        committed += written


def test_without_linger_each_trickling_message_commits_alone(tmp_path: Path) -> None:
    store, _, _ = run(tmp_path, linger_s=0.0, gap_s=0.02, count=10)
    assert len(store.writes) >= 8, "the reference case: 20 ms apart, no linger, a commit each"


def test_a_message_that_finds_the_loop_idle_does_not_linger(tmp_path: Path) -> None:
    """A chain's step: its result arrives alone and is committed at once, not after the linger."""
    _, conn, took = run(tmp_path, linger_s=20.0, gap_s=0.0, count=1, linger_gap_s=10.0)
    assert conn.acked == [1]
    # a linger would hold it >= 10 s: half of that tells the two apart on any machine (0.9 s of a
    # 1 s linger did not, under load)
    assert took < 5.0, f"a lone message waited {took:.2f} s"


def test_a_gap_ends_the_linger(tmp_path: Path) -> None:
    """Messages 50 ms apart with a 5 ms gap: each its own batch, also the one that found a message
    waiting (a slow first commit) and so lingers."""
    store, conn, _ = run(tmp_path, linger_s=1.0, gap_s=0.05, count=6, linger_gap_s=0.005, slow_first_s=0.08)
    assert conn.acked == [1, 2, 3, 4, 5, 6]
    assert len(store.writes) >= 5, "a lone message waited out the whole linger"
