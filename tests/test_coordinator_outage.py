"""A coordinator whose store cannot commit (a full or read-only disk), and a --db that cannot be opened.

The coordinator runs for real (its loop thread, handlers, store) with an injected connection that
records what it publishes and acknowledges, over a store that fails on demand; the SQLite store
is made to fail for real with ``max_page_count``. The same fault with real processes, a real
broker and a real full or read-only disk is in tests/test_faults.py.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mqtt_tasks import Settings
from mqtt_tasks.cli import RET_ERROR, cli
from mqtt_tasks.coordinator import Coordinator
from mqtt_tasks.errors import StoreError
from mqtt_tasks.protocol.topics import Topics
from mqtt_tasks.store.base import TaskRecord
from mqtt_tasks.store.sqlite import SQLiteStore
from mqtt_tasks.transport import Message
from mqtt_tasks.worker.link import CoordinatorLink
from tests.brokers import wait_until

REPO = Path(__file__).resolve().parent.parent
PREFIX = "outage"
TOPICS = Topics(PREFIX)


class Recorder:
    """Stands in for the coordinator's connection: records publishes (with ``retain``) and acks."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any], bool]] = []
        self.acked: list[int] = []
        self._lock = threading.Lock()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, **_: Any) -> int:
        with self._lock:
            self.published.append((topic, json.loads(payload), retain))
            return len(self.published)

    def ack_many(self, messages: Any) -> None:
        with self._lock:
            self.acked.extend(m.mid for m in messages)

    def on(self, topic: str) -> list[dict[str, Any]]:
        with self._lock:
            return [p for t, p, _ in self.published if t == topic]

    def subscribe(self, *_: Any) -> None: ...
    def connect(self, *_: Any) -> Recorder: return self
    def close(self, *_: Any) -> None: ...


class FlakyStore(SQLiteStore):
    """An SQLite store whose commits fail while ``failing`` is set, as on a full disk."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.failing = False
        self.attempts = 0

    def commit(self) -> int:
        self.attempts += 1
        if self.failing and self._pending:
            raise StoreError(f"store {self.path}: cannot commit: database or disk is full", path=self.path)
        return super().commit()


class Harness:
    def __init__(self, store: FlakyStore) -> None:
        self.conn = Recorder()
        self.store = store
        self.coordinator = Coordinator(Settings.from_url("mqtt://127.0.0.1:1", prefix=PREFIX), store,
                                       connection=self.conn)  # type: ignore[arg-type]
        self.coordinator.start()
        self.coordinator.connected(True)
        self.mid = 0

    def feed(self, topic: str, body: dict[str, Any]) -> int:
        self.mid += 1
        self.coordinator.receive(Message(topic, json.dumps(body).encode(), 1, False, self.mid, 0))
        return self.mid

    def task(self, ident: str) -> int:
        return self.feed(TOPICS.tasks("default"), {"id": ident, "task": "add", "args": [1, 2]})

    def event(self, ident: str, state: str, **extra: Any) -> int:
        return self.feed(TOPICS.status(ident), {"id": ident, "state": state, "attempt": 1, "worker": "w1",
                                                "ts": 1.0, **extra})

    def ask(self, op: str, **request: Any) -> dict[str, Any]:
        reply_to = TOPICS.replies(f"q{self.mid}")
        self.feed(TOPICS.rpc, {"op": op, "reply_to": reply_to, "correlation": "c", **request})
        return wait_until(lambda: (self.conn.on(reply_to) or [None])[-1], 5, message=f"no answer to {op}")

    def presence(self) -> str:
        return [p["state"] for t, p, retain in self.conn.published if t == TOPICS.coordinator and retain][-1]


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(FlakyStore(str(tmp_path / "tasks.db")))
    try:
        yield h
    finally:
        h.store.failing = False
        h.coordinator.stop()


def test_a_failed_commit_holds_its_acks_and_effects_and_catches_up_when_the_store_is_back(
        harness: Harness) -> None:
    first = harness.task("before")
    wait_until(lambda: first in harness.conn.acked, 5, message="a committed batch was not acknowledged")
    harness.store.failing = True
    mids = [harness.task("t1"), harness.event("t1", "started"), harness.event("t1", "succeeded", result=3),
            harness.task("t2"), harness.event("t2", "failed", error={"type": "E", "message": "boom"})]
    wait_until(lambda: harness.conn.on(TOPICS.errors), 5, message="the outage was not reported on P/errors")
    assert harness.presence() == "degraded"
    assert not set(mids) & set(harness.conn.acked), "acknowledged what the store did not record"
    assert harness.conn.on(TOPICS.status("t2")) == [], "published a retry that no commit recorded"

    harness.store.failing = False
    wait_until(lambda: set(mids) <= set(harness.conn.acked), 10, message="the held messages were never acked")
    reports = [r["reason"] for r in harness.conn.on(TOPICS.errors)]
    assert len(reports) == 2 and "cannot commit" in reports[0] and "committing again after" in reports[1]
    assert harness.presence() == "online"
    assert [e["state"] for e in harness.conn.on(TOPICS.status("t2"))] == ["retrying"]
    assert (harness.store.get("t1") or TaskRecord("?")).state == "succeeded"
    assert (harness.store.get("t2") or TaskRecord("?")).state == "retrying"


def test_the_outage_is_said_once_and_retries_back_off(harness: Harness,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    harness.store.failing = True
    with caplog.at_level(logging.INFO, logger="mqtt_tasks"):
        for n in range(40):  # a steady stream of batches during the outage
            harness.task(f"s{n}")
            wait_until(lambda n=n: harness.conn.on(TOPICS.errors), 5)
            threading.Event().wait(0.05)
        attempts = harness.store.attempts
        harness.store.failing = False
        wait_until(lambda: len(harness.conn.on(TOPICS.errors)) == 2, 10, message="recovery was not reported")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None, "one line, no traceback"
    assert "committing again after" in caplog.text and "40 record(s) that waited written" in caplog.text
    assert attempts < 20, f"{attempts} commit attempts in 2 s: no backoff"


def test_queries_are_answered_from_memory_while_the_store_cannot_commit(harness: Harness) -> None:
    harness.store.failing = True
    harness.task("q1")
    harness.event("q1", "started")
    assert harness.ask("status", id="q1")["task"]["state"] == "started"
    tasks = harness.ask("tasks")
    assert [t["id"] for t in tasks["tasks"]] == ["q1"] and "cannot commit" in tasks["store_error"]
    harness.task("q2")
    harness.task("q3")
    wait_until(lambda: len(harness.ask("tasks")["tasks"]) == 3, 5, message="q2 and q3 were not recorded")
    first = harness.ask("tasks", task="add", limit=2)  # the live tasks page like the store's
    rest = harness.ask("tasks", task="add", limit=2, before=first["next"])
    assert sorted(t["id"] for t in first["tasks"] + rest["tasks"]) == ["q1", "q2", "q3"] and rest["next"] is None
    assert harness.ask("tasks", queue="other")["tasks"] == []
    assert harness.ask("tasks", before="nope") == {"ok": False, "invalid": True, "correlation": "c",
                                                   "error": "before: not a cursor from a previous answer's 'next'"}
    stats = harness.ask("stats")
    assert stats["live"] == 3 and "counts" not in stats and "cannot commit" in stats["store_error"]


def test_a_coordinator_stopped_during_an_outage_leaves_its_messages_to_the_broker(
        harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    harness.store.failing = True
    mid = harness.task("left")
    wait_until(lambda: harness.conn.on(TOPICS.errors), 5)
    with caplog.at_level(logging.ERROR, logger="mqtt_tasks"):
        harness.coordinator.stop()
    assert mid not in harness.conn.acked
    assert harness.presence() == "offline"
    assert "left unacknowledged" in caplog.text


def test_a_worker_treats_a_degraded_coordinator_as_absent() -> None:
    link = CoordinatorLink("w1", None, None, 1024)  # type: ignore[arg-type]
    for state, online in (("online", True), ("degraded", False), ("online", True), ("offline", False)):
        link.on_presence(Message(TOPICS.coordinator, json.dumps({"state": state}).encode(), 1, True, 0, 0))
        assert link.online is online, state


# -- the SQLite store on a full disk --------------------------------------------------------------
def test_a_failed_sqlite_commit_keeps_its_records_and_succeeds_when_there_is_room(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "full.db"))
    store.put(TaskRecord("a", body={"x": 1}))
    store.commit()
    db = store._db  # the disk is full: SQLite may not grow the file by one page
    db.execute(f"PRAGMA max_page_count={db.execute('PRAGMA page_count').fetchone()[0]}")
    for n in range(200):
        store.put(TaskRecord(f"r{n}", body={"pad": "x" * 500}))
    for _ in range(3):
        with pytest.raises(StoreError, match="cannot commit: database or disk is full"):
            store.commit()
        assert not db.in_transaction
    db.execute("PRAGMA max_page_count=1073741823")
    assert store.commit() == 200
    store.close()
    assert len(SQLiteStore(str(tmp_path / "full.db")).list_tasks(limit=1000)) == 201


# -- mqtt-tasks coordinator --db PATH that cannot be a database ---------------------------------------
@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory holding a database that cannot be written: a read-only bind mount (root ignores
    file modes), else mode 0555."""
    ro = tmp_path / "ro"
    ro.mkdir()
    SQLiteStore(str(ro / "tasks.db")).close()
    if os.geteuid() == 0:
        subprocess.run(["mount", "--bind", str(ro), str(ro)], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
    else:
        ro.chmod(0o555)
    try:
        yield ro
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(ro)], check=False)
        ro.chmod(0o755)


def bad_db_paths(tmp_path: Path, read_only_dir: Path) -> dict[str, tuple[Path, str]]:
    (tmp_path / "a-directory.db").mkdir()
    (tmp_path / "notes.txt").write_text("not a database, just text\n" * 10)
    return {"missing directory": (tmp_path / "nowhere" / "tasks.db", "does not exist"),
            "directory": (tmp_path / "a-directory.db", "is a directory"),
            "not a database": (tmp_path / "notes.txt", "not a database"),
            "read-only": (read_only_dir / "tasks.db", "not writable")}


def test_a_bad_db_path_is_one_line_naming_it(tmp_path: Path, read_only_dir: Path) -> None:
    for case, (path, why) in bad_db_paths(tmp_path, read_only_dir).items():
        argv = ["coordinator", "--broker", "mqtt://127.0.0.1:1", "--db", str(path)]
        result = CliRunner().invoke(cli, argv, prog_name="mqtt-tasks")
        assert result.exit_code == RET_ERROR, (case, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0] and why in lines[0], (case, result.output)

        done = subprocess.run([sys.executable, "-m", "mqtt_tasks", *argv], cwd=REPO, capture_output=True,
                              text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == RET_ERROR, (case, done.stderr)
        assert done.stdout == "" and done.stderr.count("\n") == 1, (case, done.stderr)
        assert str(path) in done.stderr and why in done.stderr and "Traceback" not in done.stderr, case


def test_a_message_whose_record_cannot_be_read_is_kept_until_it_can(harness: Harness) -> None:
    harness.task("old")
    wait_until(lambda: harness.store.get("old") is not None and harness.conn.acked, 5)
    real_get = harness.store.get
    failing = threading.Event()
    failing.set()

    def get(task_id: str) -> TaskRecord | None:
        if failing.is_set() and task_id == "read-me":
            raise StoreError(f"store {harness.store.path}: cannot read: disk I/O error", path=harness.store.path)
        return real_get(task_id)

    harness.store.get = get  # type: ignore[method-assign]
    harness.store.prefetch = lambda ids: None  # type: ignore[method-assign]
    mid = harness.event("read-me", "succeeded", result=1)
    wait_until(lambda: harness.conn.on(TOPICS.errors), 5, message="the failed read was not reported")
    assert mid not in harness.conn.acked and harness.presence() == "degraded"
    failing.clear()
    wait_until(lambda: mid in harness.conn.acked, 10, message="the kept message was never decided")
    assert (real_get("read-me") or TaskRecord("?")).state == "succeeded"
    assert harness.presence() == "online"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_the_wal_never_fills_a_small_disk_by_itself(tmp_path: Path) -> None:
    """With SQLite's default checkpoint (1,000 pages, about 4 MB) the WAL alone filled a 2 MiB disk
    and every later commit failed, with nothing else on it (the record 'never recovered')."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], check=True)
    try:
        store = SQLiteStore(str(disk / "tasks.db"))
        for batch in range(60):  # 500 tasks, each written 12 times
            for n in range(100):
                store.put(TaskRecord(f"t{batch % 5}-{n}", body={"pad": "x" * 800}, updated=batch))
            store.commit()
        store.close()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
