"""Delayed tasks, priorities, retry and purge end to end: coordinator and workers on real brokers.

The delays are short (1-3 s) so the suite stays quick; the mechanism does not depend on their
length: a scheduled task is a record and a timer in the coordinator, nothing in a worker.
"""

from __future__ import annotations

import queue
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from mqtt_tasks.app import TaskApp
from mqtt_tasks.cli import RET_CONNECT, RET_ERROR, RET_NOT_FOUND, RET_OK, RET_USAGE
from mqtt_tasks.coordinator import purge_queue, query_status, retry_task
from mqtt_tasks.errors import MqttTasksError, TaskCancelledError, TaskDeadError, TaskFailedError, TaskNotFoundError
from mqtt_tasks.protocol import codec
from mqtt_tasks.transport import Connection, Message
from tests.brokers import wait_until
from tests.chaos_tasks import make_app
from tests.coord_helpers import coordinator, executions, settings, spawn_coordinator, worker
from tests.test_cli import assert_one_line_error, run


class Watch:
    """Every message on some topics, decoded: status events and error reports."""

    def __init__(self, url: str, prefix: str, *topics: str) -> None:
        self.messages: queue.SimpleQueue[tuple[str, dict[str, Any]]] = queue.SimpleQueue()
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.conn = Connection(settings(url, prefix), f"watch-{uuid.uuid4().hex[:8]}", on_message=self._on)
        for topic in topics:
            self.conn.subscribe(f"{prefix}/{topic}")
        self.conn.connect()

    def _on(self, message: Message) -> None:
        self.messages.put((message.topic, codec.decode_json_object(message.payload)))

    def events(self, task_id: str, state: str | None = None) -> list[dict[str, Any]]:
        while not self.messages.empty():
            self.seen.append(self.messages.get())
        return [m for _, m in self.seen if m.get("id") == task_id and state in (None, m.get("state"))]

    def close(self) -> None:
        self.conn.close()


def status(url: str, prefix: str, task_id: str) -> dict[str, Any]:
    return query_status(settings(url, prefix), task_id)


def state_is(url: str, prefix: str, task_id: str, state: str) -> bool:
    return status(url, prefix, task_id)["state"] == state


def test_a_delayed_task_is_held_by_the_coordinator_and_runs_at_its_time(broker_url: str, prefix: str) -> None:
    watch = Watch(broker_url, prefix, "status/+")
    try:
        with coordinator(broker_url, prefix), worker(broker_url, prefix, "w1", concurrency=1) as w, \
                make_app(broker_url, prefix).connect() as app:
            wait_until(lambda: w.coordinator_online, 10)
            delayed = app.registry["work"].submit_with(["later", 0.3], delay=2.5)
            wait_until(lambda: state_is(broker_url, prefix, delayed.id, "scheduled"), 10, 0.1)
            assert w.held == []  # no worker holds it, none is charged a slot: with one slot ...
            assert app.submit("work", "now").result(5) == "now"  # ... another task runs meanwhile
            assert not delayed.done()
            assert delayed.result(20) == "later"
            record = status(broker_url, prefix, delayed.id)
            not_before = record["history"][0]["not_before"]
            (started,) = watch.events(delayed.id, "started")
            assert started["ts"] >= not_before, (started["ts"], not_before)
            states = [e["state"] for e in watch.events(delayed.id)]  # the worker's hand-over may come first
            assert states.index("scheduled") < states.index("started"), states
            assert record["attempt"] == 1 and [h["event"] for h in record["history"]][:2] == ["scheduled", "due"]
    finally:
        watch.close()


def test_any_mqtt_client_can_delay_a_task(broker_url: str, prefix: str) -> None:
    task_id = f"{prefix}-raw"
    with coordinator(broker_url, prefix), worker(broker_url, prefix, "w1"), make_app(broker_url, prefix) as app:
        raw = Connection(settings(broker_url, prefix), f"{prefix}-raw").connect()
        try:
            not_before = time.time() + 1.5
            raw.publish(f"{prefix}/tasks/default", codec.encode(
                {"id": task_id, "task": "work", "args": ["raw"], "not_before": not_before}))
        finally:
            raw.close()
        assert app.handle(task_id).result(15) == "raw"
        record = status(broker_url, prefix, task_id)
        assert record["history"][0]["event"] == "scheduled" and record["updated"] >= not_before


def test_without_a_coordinator_a_delayed_task_is_refused_not_run_early(broker_url: str, prefix: str,
                                                                       tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    watch = Watch(broker_url, prefix, "errors")
    try:
        with worker(broker_url, prefix, "w1", log=log), make_app(broker_url, prefix).connect() as app:
            handle = app.registry["work"].submit_with(["early"], delay=60)
            with pytest.raises(TaskFailedError) as info:
                handle.result(10)
            assert info.value.status["error"]["type"] == "NotBeforeError"
            assert "no coordinator is online" in info.value.status["error"]["message"]
            report = wait_until(lambda: watch.events(handle.id), 10)[0]
            assert "refused rather than run early" in report["reason"]
        assert executions(log) == {}
    finally:
        watch.close()


def test_priority_orders_the_coordinator_s_backlog(broker_url: str, prefix: str, tmp_path: Path) -> None:
    log = tmp_path / "log"
    plan = [("a", 1), ("b", 9), ("c", None), ("d", 7), ("e", 0), ("f", 5)]
    with coordinator(broker_url, prefix) as c, make_app(broker_url, prefix).connect() as app:
        at = time.time() + 1.0  # all due at once, while no worker runs: they wait in the backlog together
        handles = [app.registry["work"].submit_with([name], task_id=f"{prefix}-{name}", at=at, priority=prio)
                   for name, prio in plan]
        wait_until(lambda: c.backlog_size == len(plan), 15, message="the delayed tasks never reached the backlog")
        with worker(broker_url, prefix, "w1", concurrency=1, log=str(log)):
            assert [h.result(20) for h in handles] == [name for name, _ in plan]
    started = [line.split()[1] for line in log.read_text().splitlines() if line.startswith("start")]
    assert started == ["b", "d", "c", "f", "a", "e"]


def test_retry_runs_a_dead_task_again_with_its_history(broker_url: str, prefix: str) -> None:
    with coordinator(broker_url, prefix), worker(broker_url, prefix, "w1"), \
            make_app(broker_url, prefix).connect() as app:
        handle = app.submit("boom")
        with pytest.raises(TaskDeadError):
            handle.result(20)
        answer = retry_task(settings(broker_url, prefix), handle.id)
        assert answer["attempt"] == 3 and answer["failures"] == 0
        wait_until(lambda: status(broker_url, prefix, handle.id)["state"] == "dead", 20, 0.2)
        record = status(broker_url, prefix, handle.id)
        failed = [h["attempt"] for h in record["history"] if h["event"] == "failed"]
        assert failed == [1, 2, 3, 4] and "rerun" in [h["event"] for h in record["history"]]
        with pytest.raises(MqttTasksError, match="only a dead, cancelled or expired task"):
            retry_task(settings(broker_url, prefix), _succeeded(app))
        with pytest.raises(TaskNotFoundError):
            retry_task(settings(broker_url, prefix), "no-such-task")


def _succeeded(app: TaskApp) -> str:
    handle = app.submit("work", "ok")
    handle.result(10)
    return handle.id


def test_retry_runs_an_expired_task_without_its_expiry(broker_url: str, prefix: str) -> None:
    task_id = f"{prefix}-exp"
    with coordinator(broker_url, prefix), worker(broker_url, prefix, "w1"), make_app(broker_url, prefix) as app:
        raw = Connection(settings(broker_url, prefix), f"{prefix}-raw").connect()
        try:
            raw.publish(f"{prefix}/tasks/default", codec.encode(
                {"id": task_id, "task": "work", "args": ["revived"], "expires_at": time.time() - 60}))
        finally:
            raw.close()
        wait_until(lambda: status(broker_url, prefix, task_id)["state"] == "expired", 15, 0.2)
        retry_task(settings(broker_url, prefix), task_id)
        assert app.handle(task_id).result(15) == "revived"


def test_purge_cancels_what_waits_in_a_queue(broker_url: str, prefix: str) -> None:
    s = settings(broker_url, prefix)
    with coordinator(broker_url, prefix) as c, make_app(broker_url, prefix).connect() as app:
        work = app.registry["work"]
        ready = [work.submit_with([f"r{i}"], queue="pq", delay=0.5) for i in range(2)]
        later = [work.submit_with([f"l{i}"], queue="pq", delay=600) for i in range(3)]
        other = work.submit_with(["o"], queue="other", delay=600)
        wait_until(lambda: c.backlog_size == 2 and c.live_count == 6, 15)
        kept = purge_queue(s, "pq", keep_scheduled=True)
        assert kept["purged"] == 2 and kept["by_state"] == {"backlog": 2, "retrying": 0}
        for handle in ready:
            with pytest.raises(TaskCancelledError, match="purged from queue pq"):
                handle.result(10)
        assert purge_queue(s, "pq")["by_state"] == {"backlog": 0, "retrying": 0, "scheduled": 3}
        for handle in later:
            with pytest.raises(TaskCancelledError):
                handle.result(10)
        assert status(broker_url, prefix, other.id)["state"] == "scheduled"
        assert purge_queue(s, "pq")["purged"] == 0


@pytest.mark.slow
def test_coordinator_kill_9_while_delayed_tasks_are_pending(mosquitto: Any, prefix: str, tmp_path: Path) -> None:
    """Nothing lost, nothing early, nothing twice: 30 delayed tasks, some due while the coordinator
    is dead (fired on recovery), the rest after it is back."""
    url, db, log = mosquitto.url, str(tmp_path / "c.db"), str(tmp_path / "log")
    watch = Watch(url, prefix, "status/+")
    proc = spawn_coordinator(url, prefix, db)
    try:
        with worker(url, prefix, "w1", concurrency=4, log=log), make_app(url, prefix).connect() as app:
            handles = {app.registry["work"].submit_with([f"k{i}", 0.2], delay=1.5 + (i % 10) * 0.4).id: i
                       for i in range(30)}
            wait_until(lambda: all(watch.events(t, "scheduled") for t in handles), 15, 0.05,
                       message="not all were scheduled")
            proc.kill()
            proc.wait()
            first_due = min(watch.events(t, "scheduled")[0]["next_at"] for t in handles)
            wait_until(lambda: time.time() > first_due + 1.0, 10)  # some come due while it is dead
            proc = spawn_coordinator(url, prefix, db)
            results = {app.handle(task_id).result(60) for task_id in handles}
            assert results == {f"k{i}" for i in range(30)}
        assert all(len(runs) == 2 for runs in executions(log).values()) and len(executions(log)) == 30
        for task_id in handles:
            (started,) = watch.events(task_id, "started")
            not_before = watch.events(task_id, "scheduled")[0]["next_at"]
            assert started["ts"] >= not_before, (task_id, started["ts"], not_before)
    finally:
        watch.close()
        proc.terminate()
        proc.wait(10)
    from mqtt_tasks.store import SQLiteStore

    store = SQLiteStore(db)
    counts = store.counts()
    store.close()
    assert counts == {"succeeded": 30}, counts


# -- the CLI ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "needle"), [
    (["--delay", "-5"], "in the past"),
    (["--at", "2001-01-01T00:00:00"], "in the past"),
    (["--at", "next tuesday"], "not a time"),
    (["--delay", "5", "--at", "2999-01-01"], "not both"),
    (["--priority", "12"], "12 is not in the range"),
])
def test_submit_refuses_bad_scheduling_options_in_one_line(args: list[str], needle: str) -> None:
    line = assert_one_line_error(run("submit", "work", "x", *args, "--broker", "mqtt://127.0.0.1:1"), RET_USAGE)
    assert needle in line


def test_cli_delay_retry_and_purge(broker_url: str, prefix: str) -> None:
    opts = ["--broker", broker_url, "--prefix", prefix]
    with coordinator(broker_url, prefix) as c:
        submitted = run("submit", "work", "x", "--queue", "cq", "--delay", "600", "--priority", "8", *opts)
        assert submitted.exit_code == RET_OK, submitted.output
        task_id = submitted.stdout.strip()
        wait_until(lambda: state_is(broker_url, prefix, task_id, "scheduled"), 10, 0.1)
        assert status(broker_url, prefix, task_id)["state"] == "scheduled"
        line = assert_one_line_error(run("retry", task_id, *opts), RET_ERROR)
        assert "is scheduled" in line
        assert_one_line_error(run("retry", "no-such-task", *opts), RET_NOT_FOUND)
        purged = run("purge", "cq", *opts)
        assert purged.stdout == "purged 1 task(s) from queue cq (0 backlog, 0 retrying, 1 scheduled)\n", purged.output
        retried = run("retry", task_id, *opts)
        assert retried.stdout == f"task {task_id} will run again as attempt 2 (scheduled)\n", retried.output
        assert c.live_count == 1
    assert_one_line_error(run("purge", "bad/queue", *opts), RET_USAGE)
    line = assert_one_line_error(run("retry", "x", *opts, "--timeout", "0.3"), RET_CONNECT)
    assert "no coordinator answered" in line
