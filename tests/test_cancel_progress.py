"""Cancel, task context and progress, end to end on both brokers: real sockets, a coordinator, workers.

The task bodies live here (in-process workers), and tell the test what they observed through
``Seen``: a cancel raised in a plain function, a cancelled coroutine, an ignored cancel.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from click.testing import CliRunner

from mqtt_tasks import TaskApp, TaskCancelled, TaskCancelledError, Worker, current_task
from mqtt_tasks.cli import RET_CONNECT, RET_NOT_FOUND, cli
from mqtt_tasks.coordinator import query_status
from mqtt_tasks.protocol import codec
from mqtt_tasks.transport import Connection
from tests.brokers import wait_until
from tests.coord_helpers import HB, coordinator, settings
from tests.test_cli import assert_one_line_error


class Seen:
    """What the task bodies observed, for the test to wait on."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[str, str]] = []
        self.release = threading.Event()  # lets a stubborn body end

    def add(self, kind: str, ident: str) -> None:
        with self.lock:
            self.events.append((kind, ident))

    def has(self, kind: str, ident: str) -> bool:
        with self.lock:
            return (kind, ident) in self.events


def make_app(url: str, prefix: str, seen: Seen) -> TaskApp:
    app = TaskApp(settings=settings(url, prefix))
    _cancel_tasks(app, seen)
    _progress_tasks(app, seen)
    return app


def _cancel_tasks(app: TaskApp, seen: Seen) -> None:
    @app.task(name="sleepy")
    def sleepy(ident: str, seconds: float = 30.0) -> str:
        seen.add("start", ident)
        try:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                time.sleep(0.02)
        except TaskCancelled:
            seen.add("cancelled", ident)
            raise
        return ident

    @app.task(name="asleepy")
    async def asleepy(ident: str, seconds: float = 30.0) -> str:
        seen.add("start", ident)
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            seen.add("cancelled", ident)
            raise
        return ident

    @app.task(name="stubborn")
    def stubborn(ident: str) -> str:
        seen.add("start", ident)
        while not seen.release.is_set():
            try:
                seen.release.wait(0.05)
            except TaskCancelled:
                seen.add("ignored", ident)  # and goes on: Python cannot make it stop
        seen.add("end", ident)
        return ident


def _progress_tasks(app: TaskApp, seen: Seen) -> None:
    @app.task(name="steps")
    def steps(ident: str, n: int = 20) -> dict[str, Any]:
        task = current_task()
        assert task is not None
        for i in range(n):
            task.progress((i + 1) / n, f"step {i + 1} of {n}")
            time.sleep(0.02)
        seen.add("done", ident)
        return {"id": task.id, "attempt": task.attempt, "queue": task.queue, "worker": task.worker}

    @app.task(name="hangs_once", step_timeout=1.0, max_attempts=3)
    def hangs_once(ident: str) -> int:
        task = current_task()
        assert task is not None
        task.progress(0.1, "begun")
        if task.attempt == 1:
            try:
                while True:  # hangs, reporting nothing, while its worker heartbeats on
                    time.sleep(0.02)
            except TaskCancelled:
                seen.add("stopped", ident)
                raise
        return task.attempt


@contextmanager
def a_worker(url: str, prefix: str, seen: Seen, worker_id: str = "w1", **options: Any) -> Iterator[Worker]:
    options.setdefault("concurrency", 1)
    w = Worker(make_app(url, prefix, seen), worker_id=worker_id, heartbeat_s=HB, grace=2.0, started_after=0,
               **options)
    w.start()
    try:
        yield w
    finally:
        seen.release.set()
        w.stop(grace=2.0)


@contextmanager
def producer(url: str, prefix: str, seen: Seen) -> Iterator[TaskApp]:
    app = make_app(url, prefix, seen).connect()
    try:
        yield app
    finally:
        app.close()


@contextmanager
def status_watch(url: str, prefix: str) -> Iterator[queue.SimpleQueue[dict[str, Any]]]:
    events: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
    conn = Connection(settings(url, prefix), f"{prefix}-watch",
                      on_message=lambda m: events.put(codec.decode_json_object(m.payload)))
    conn.subscribe(f"{prefix}/status/+")
    conn.connect()
    try:
        yield events
    finally:
        conn.close()


def drain(events: queue.SimpleQueue[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    while not events.empty():
        out.append(events.get())
    return out


def cancelled_within(handle: Any, timeout: float) -> TaskCancelledError:
    with pytest.raises(TaskCancelledError) as info:
        handle.result(timeout)
    return info.value


# -- cancel ------------------------------------------------------------------------------------
def test_cancel_of_a_queued_task_with_no_worker(broker_url: str, prefix: str) -> None:
    seen = Seen()
    with coordinator(broker_url, prefix) as c, producer(broker_url, prefix, seen) as app:
        h = app.submit("sleepy", "q1", 0.1)
        wait_until(lambda: c.live_count == 1, 10)
        h.cancel("not needed")
        error = cancelled_within(h, 10)
        assert "not needed" in str(error)
        assert query_status(settings(broker_url, prefix), h.id)["state"] == "cancelled"
        assert c.stats["cancelled"] == 1


def test_cancel_of_a_backlogged_then_of_a_running_sync_task(broker_url: str, prefix: str) -> None:
    seen = Seen()
    with coordinator(broker_url, prefix) as c, a_worker(broker_url, prefix, seen, defer_after=0) as w, \
            producer(broker_url, prefix, seen) as app:
        running = app.submit("sleepy", "run1")
        wait_until(lambda: seen.has("start", "run1"), 10)
        waiting = app.submit("sleepy", "wait1", 0.1)
        wait_until(lambda: c.backlog_size == 1, 10, message="the second task reaches the backlog")
        waiting.cancel()
        cancelled_within(waiting, 10)
        assert not seen.has("start", "wait1")
        running.cancel()
        cancelled_within(running, 10)
        wait_until(lambda: seen.has("cancelled", "run1"), 10, message="the body sees TaskCancelled")
        assert app.submit("sleepy", "next", 0.05).result(15) == "next"  # the slot is reused
        assert w.stats["cancelled"] == 1 and w.stats["abandoned"] == 0
        assert query_status(settings(broker_url, prefix), waiting.id)["state"] == "cancelled"


def test_cancel_of_a_running_async_task(broker_url: str, prefix: str) -> None:
    seen = Seen()
    with coordinator(broker_url, prefix), a_worker(broker_url, prefix, seen), \
            producer(broker_url, prefix, seen) as app:
        h = app.submit("asleepy", "a1")
        wait_until(lambda: seen.has("start", "a1"), 10)
        h.cancel()
        cancelled_within(h, 10)
        wait_until(lambda: seen.has("cancelled", "a1"), 10, message="the coroutine sees CancelledError")
        assert app.submit("asleepy", "a2", 0.05).result(15) == "a2"


def test_a_body_that_ignores_its_cancel_is_abandoned_and_keeps_its_slot(broker_url: str, prefix: str) -> None:
    seen = Seen()
    with coordinator(broker_url, prefix), status_watch(broker_url, prefix) as events, \
            a_worker(broker_url, prefix, seen, cancel_grace=0.5) as w, producer(broker_url, prefix, seen) as app:
        h = app.submit("stubborn", "s1")
        wait_until(lambda: seen.has("start", "s1"), 10)
        h.cancel()
        cancelled_within(h, 10)  # the handle hears at once; the body goes on
        wait_until(lambda: seen.has("ignored", "s1"), 10)
        wait_until(lambda: w.stats["abandoned"] == 1, 10, message="abandoned after the grace")
        assert w.stale_runs == 1 and w.snapshot().free == 0  # its slot stays taken, and says why
        beat = w._heartbeat.payload("online")  # noqa: SLF001 - the heartbeat's content, as sent
        assert json.loads(beat)["stuck"] == 1 and json.loads(beat)["free"] == 0
        seen.release.set()
        wait_until(lambda: seen.has("end", "s1"), 10)
        wait_until(lambda: w.snapshot().free == 1, 10, message="the slot comes back when the body ends")
        assert w.stale_runs == 0
        assert app.submit("sleepy", "after", 0.05).result(15) == "after"
        states = [e["state"] for e in drain(events) if e["id"] == h.id]
        assert "cancelled" in states and "succeeded" not in states  # its late return is never reported


def test_cancel_without_a_coordinator_reaches_the_worker_that_holds_it(broker_url: str, prefix: str) -> None:
    seen = Seen()
    with a_worker(broker_url, prefix, seen) as w, producer(broker_url, prefix, seen) as app:
        running = app.submit("sleepy", "nc1")
        wait_until(lambda: seen.has("start", "nc1"), 10)
        line = app.submit("sleepy", "nc2", 0.05)  # waits in the worker's line (no coordinator to defer to)
        wait_until(lambda: w.snapshot().waiting == 1, 10)
        line.cancel()
        cancelled_within(line, 10)
        running.cancel()
        cancelled_within(running, 10)  # the worker's own event is final: no coordinator online
        wait_until(lambda: seen.has("cancelled", "nc1"), 10)
        assert not seen.has("start", "nc2")


def test_without_a_coordinator_a_cancel_by_id_keeps_refusing_the_task_a_newer_attempt_runs(
        broker_url: str, prefix: str) -> None:
    """A cancel covers the attempts it was made about (worker/cancel.py): by id alone, with nothing of
    the task here, the producer's attempt 1, however often it comes; an attempt above it is a
    coordinator's (an operator's retry) and runs."""
    seen = Seen()
    with a_worker(broker_url, prefix, seen) as w, producer(broker_url, prefix, seen) as app:
        app.cancel("x1")
        assert app.submit("sleepy", "canary", 0.01).result(10) == "canary"  # sent after it: the cancel is in
        for _ in range(2):
            cancelled_within(app.send("sleepy", ["x1", 0.01], task_id="x1"), 10)
        assert not seen.has("start", "x1")
        retried = {"id": "x1", "task": "sleepy", "args": ["x1", 0.01], "attempt": 2}
        app.connection().publish(w.topics.tasks("default"), codec.encode(retried))
        wait_until(lambda: seen.has("start", "x1"), 10, message="the newer attempt was refused")


def test_cancel_cli_unknown_id_and_no_coordinator(broker_url: str, prefix: str) -> None:
    runner = CliRunner()
    with coordinator(broker_url, prefix):
        result = runner.invoke(cli, ["cancel", "no-such-task", "--broker", broker_url, "--prefix", prefix])
        line = assert_one_line_error(result, RET_NOT_FOUND)
        assert "no record" in line
    result = runner.invoke(cli, ["cancel", "x", "--broker", broker_url, "--prefix", prefix, "--timeout", "0.3"])
    assert "no coordinator answered" in assert_one_line_error(result, RET_CONNECT)


def test_cancel_cli_of_a_running_task(broker_url: str, prefix: str) -> None:
    seen = Seen()
    with coordinator(broker_url, prefix), a_worker(broker_url, prefix, seen), \
            producer(broker_url, prefix, seen) as app:
        h = app.submit("sleepy", "c1")
        wait_until(lambda: seen.has("start", "c1"), 10)
        result = CliRunner().invoke(cli, ["cancel", h.id, "--reason", "operator", "--broker", broker_url,
                                          "--prefix", prefix])
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == f"{h.id} cancelled"
        assert "operator" in str(cancelled_within(h, 10))
        again = CliRunner().invoke(cli, ["cancel", h.id, "--broker", broker_url, "--prefix", prefix])
        assert again.exit_code == 0  # cancelled already: fine
        done = app.submit("sleepy", "c2", 0.05)
        assert done.result(15) == "c2"
        ended = CliRunner().invoke(cli, ["cancel", done.id, "--broker", broker_url, "--prefix", prefix])
        assert "already ended succeeded" in assert_one_line_error(ended, 1)


# -- context and progress ------------------------------------------------------------------------
def test_progress_reaches_the_handle_and_status_rate_limited(broker_url: str, prefix: str) -> None:
    seen = Seen()
    with coordinator(broker_url, prefix), status_watch(broker_url, prefix) as events, \
            a_worker(broker_url, prefix, seen, progress_every=0.2) as w, producer(broker_url, prefix, seen) as app:
        h = app.submit("steps", "p1", 40)  # 40 reports over about 0.8 s
        assert h.progress() is None  # follows from here on
        wait_until(lambda: h.progress() is not None, 10, message="a progress event reaches the handle")
        result = h.result(15)
        assert result == {"id": h.id, "attempt": 1, "queue": "default", "worker": w.worker_id}
        progress = [e for e in drain(events) if e["id"] == h.id and e["state"] == "progress"]
        assert 2 <= len(progress) <= 8, len(progress)  # rate-limited: not 40
        assert all(e["worker"] == w.worker_id and 0 < e["progress"]["fraction"] <= 1 for e in progress)
        latest = h.progress()
        assert latest is not None and latest.message and latest.message.startswith("step ")
        out = CliRunner().invoke(cli, ["status", h.id, "--broker", broker_url, "--prefix", prefix])
        record = json.loads(out.stdout)
        assert record["progress"]["attempt"] == 1 and record["progress"]["message"].startswith("step ")


def test_the_step_timer_catches_a_task_hung_on_a_live_worker(broker_url: str, prefix: str) -> None:
    seen = Seen()
    with coordinator(broker_url, prefix) as c, a_worker(broker_url, prefix, seen) as w, \
            producer(broker_url, prefix, seen) as app:
        h = app.submit("hangs_once", "h1")
        assert h.result(20) == 2  # attempt 1 hung; attempt 2 ran
        wait_until(lambda: seen.has("stopped", "h1"), 10, message="the hung body was stopped")
        status = query_status(settings(broker_url, prefix), h.id)
        assert status["failures"] == 1 and status["state"] == "succeeded"
        assert any("no progress within its step_timeout of 1s" in (e.get("reason") or "") for e in status["history"])
        assert c.stats["redispatched"] == 1 and w.coordinator_online
