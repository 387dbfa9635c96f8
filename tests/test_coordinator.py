"""The coordinator against real brokers: leases, re-dispatch, fencing, retries, dead letters."""

from __future__ import annotations

import queue
import time
from pathlib import Path
from typing import Any

import pytest

from mqtt_tasks.app import TaskApp
from mqtt_tasks.coordinator import TaskNotFoundError, query_stats, query_status, query_tasks
from mqtt_tasks.errors import TaskDeadError
from mqtt_tasks.protocol import codec
from mqtt_tasks.transport import Connection
from tests.brokers import wait_until
from tests.chaos_tasks import make_app
from tests.coord_helpers import coordinator, executions, settings, worker


def producer(url: str, prefix: str) -> TaskApp:
    return make_app(url, prefix).connect()


def test_tasks_are_recorded_and_succeed(broker_url: str, prefix: str) -> None:
    with coordinator(broker_url, prefix) as c, worker(broker_url, prefix, "w1"), producer(broker_url, prefix) as app:
        handles = [app.submit("work", f"t{i}") for i in range(20)]
        assert [h.result(15) for h in handles] == [f"t{i}" for i in range(20)]
        wait_until(lambda: c.stats["succeeded"] == 20, 10)
        assert c.live_count == 0
        status = query_status(settings(broker_url, prefix), handles[0].id)
        assert status["state"] == "succeeded" and status["result"] == "t0"
        assert len(query_tasks(settings(broker_url, prefix), state="succeeded")) == 20


def test_failures_are_retried_then_dead_lettered(broker_url: str, prefix: str) -> None:
    dead: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    watcher = Connection(settings(broker_url, prefix), f"{prefix}-dead", on_message=lambda m: dead.put(m.payload))
    watcher.subscribe(f"{prefix}/dead/+")
    watcher.connect()
    try:
        with coordinator(broker_url, prefix) as c, worker(broker_url, prefix, "w1"), \
                producer(broker_url, prefix) as app:
            h = app.submit("boom")
            with pytest.raises(TaskDeadError) as info:
                h.result(20)
            assert "attempts exhausted (2)" in str(info.value) or info.value.status.get("state") == "dead"
            letter = codec.decode_json_object(dead.get(timeout=10))
            assert letter["id"] == h.id and letter["failures"] == 2
            assert [a["event"] for a in letter["attempts"] if a["event"] == "failed"] == ["failed", "failed"]
            assert c.stats["retried"] == 1 and c.stats["dead"] == 1
    finally:
        watcher.close()


def test_a_dead_worker_s_task_runs_again_elsewhere(mosquitto, prefix: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    log = str(tmp_path / "log")
    url = mosquitto.url
    with coordinator(url, prefix), producer(url, prefix) as app, worker(url, prefix, "w1", log=log) as w1:
        h = app.submit("work", "long", 30.0)
        wait_until(lambda: "long" in executions(log), 10)
        # the coordinator has heard it start on w1 (``started`` leaves after --started-after): a
        # task it never heard start would be a different case (a queued task nobody accounts for)
        wait_until(lambda: query_status(settings(url, prefix), h.id)["state"] == "started", 10)
        w1.abort()  # the process "dies": no DISCONNECT, so the broker sends the Last Will
        with worker(url, prefix, "w2", log=log):
            # attempt 2 exists from the Last Will on, in the backlog; it is w2's once w2's heartbeat
            # offered a slot (its first beat may come after start() returns): wait for it to run there
            def runs_on_w2() -> dict[str, Any] | None:
                status = query_status(settings(url, prefix), h.id)
                return status if (status["attempt"], status["state"], status["worker"]) == (2, "started", "w2") \
                    else None

            status = wait_until(runs_on_w2, 10, message="attempt 2 never ran on w2")
            assert (status["failures"], status["losses"]) == (0, 1)  # a suspect
            assert status["history"][1]["reason"] == ("worker w1 went offline while running it; a suspect now, "
                                                      "it runs again with others next")


def test_a_task_three_times_the_lease_runs_exactly_once(mosquitto, prefix: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    log = str(tmp_path / "log")
    url = mosquitto.url
    with coordinator(url, prefix) as c, worker(url, prefix, "w1", log=log), producer(url, prefix) as app:
        lease = c.policy.lease_heartbeats * 0.5 + c.policy.lease_slack
        h = app.submit("work", "slow", lease * 3)
        assert h.result(lease * 3 + 15) == "slow"
        assert [kind for kind, _pid in executions(log)["slow"]] == ["start", "end"]
        assert c.stats["redispatched"] == 0 and c.stats["cancels"] == 0
        assert query_status(settings(url, prefix), h.id)["attempt"] == 1


def test_no_worker_online_tasks_wait_and_run_when_one_appears(broker_url: str, prefix: str) -> None:
    with coordinator(broker_url, prefix) as c, producer(broker_url, prefix) as app:
        handles = [app.submit("work", f"w{i}") for i in range(10)]
        wait_until(lambda: c.stats["recorded"] == 10, 10)
        time.monotonic()
        with worker(broker_url, prefix, "late"):
            assert sorted(h.result(30) for h in handles) == sorted(f"w{i}" for i in range(10))


def test_result_after_the_fact_from_the_coordinator(broker_url: str, prefix: str) -> None:
    with coordinator(broker_url, prefix) as c, worker(broker_url, prefix, "w1"):
        with producer(broker_url, prefix) as app:
            task_id = app.submit("work", "early").id
            wait_until(lambda: c.stats["succeeded"] == 1, 10)
        with producer(broker_url, prefix) as other:  # a new process, after the result was published
            assert other.handle(task_id).result(10) == "early"
            pending = other.handle("not-yet-known")
            assert not pending.done()
        with pytest.raises(TaskNotFoundError):
            query_status(settings(broker_url, prefix), "no-such-task")
        assert query_stats(settings(broker_url, prefix))["stats"]["succeeded"] == 1


def test_bad_input_is_reported_and_the_next_message_processed(broker_url: str, prefix: str) -> None:
    errors: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    watcher = Connection(settings(broker_url, prefix), f"{prefix}-err", on_message=lambda m: errors.put(m.payload))
    watcher.subscribe(f"{prefix}/errors")
    watcher.connect()
    try:
        with coordinator(broker_url, prefix) as c, worker(broker_url, prefix, "w1"), \
                producer(broker_url, prefix) as app:
            for topic, payload in [(f"{prefix}/tasks/default", b"not json"), (f"{prefix}/status/x", b"[1]"),
                                   (f"{prefix}/workers/w9", b"{}"), (f"{prefix}/rpc/coordinator", b'{"op":1}')]:
                watcher.publish(topic, payload)
            assert app.submit("work", "after").result(10) == "after"
            reports = []
            while len(reports) < 4:
                report = codec.decode_json_object(errors.get(timeout=10))
                if report["component"] == "coordinator":
                    reports.append(report)
            assert c.stats["rejected"] >= 3
    finally:
        watcher.close()


def test_the_attempt_limit_a_worker_applied_is_honoured(broker_url: str, prefix: str) -> None:
    """A task sent without ``max_attempts`` (any MQTT client can) whose registration says 5: the
    worker reports the limit on each ``failed`` event, and the coordinator buries it after 5, not 3."""
    task_id = f"{prefix}-five"
    with coordinator(broker_url, prefix) as c, worker(broker_url, prefix, "w1"), \
            producer(broker_url, prefix) as app:
        raw = Connection(settings(broker_url, prefix), f"{prefix}-raw").connect()
        try:
            raw.publish(f"{prefix}/tasks/default", codec.encode({"id": task_id, "task": "boom5"}))
        finally:
            raw.close()
        with pytest.raises(TaskDeadError) as info:
            app.handle(task_id).result(30)
        assert info.value.status["state"] == "dead" and "attempts exhausted (5)" in info.value.status["reason"]
        status = query_status(settings(broker_url, prefix), task_id)
        assert status["state"] == "dead" and status["failures"] == 5 and status["max_attempts"] == 5
        assert c.stats["retried"] == 4 and c.stats["dead"] == 1


def test_a_dead_task_s_reply_never_lands_on_the_prefix_s_own_topics(mosquitto, prefix: str) -> None:  # type: ignore[no-untyped-def]
    """A ``reply_to`` naming the task topic: the final ``dead`` event would decode there as a runnable
    task. The coordinator refuses it, as the worker does, and reports the refusal on ``P/errors``."""
    url, task_id = mosquitto.url, f"{prefix}-loop"
    seen: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
    watcher = Connection(settings(url, prefix), f"{prefix}-watch", on_message=lambda m: seen.put((m.topic, m.payload)))
    for topic in (f"{prefix}/tasks/#", f"{prefix}/errors", f"{prefix}/status/{task_id}"):
        watcher.subscribe(topic)
    watcher.connect()
    try:
        with coordinator(url, prefix), worker(url, prefix, "w1"):
            task = {"id": task_id, "task": "boom", "reply_to": f"{prefix}/tasks/default"}
            watcher.publish(f"{prefix}/tasks/default", codec.encode(task))
            on_tasks, report = [], None
            while report is None and len(on_tasks) < 2:  # the refusal goes out where the reply would have
                topic, payload = seen.get(timeout=30)
                message = codec.decode_json_object(payload)
                if topic.startswith(f"{prefix}/tasks/"):
                    on_tasks.append(message)
                elif topic == f"{prefix}/errors" and message.get("component") == "coordinator":
                    report = message
            assert on_tasks == [task]  # only the task itself: no dead event on the task topic
            assert report is not None and report["id"] == task_id and "refusing to reply" in report["reason"]
            assert report["topic"] == f"{prefix}/tasks/default"
            assert query_status(settings(url, prefix), task_id)["state"] == "dead"
    finally:
        watcher.close()


@pytest.mark.parametrize("task", ["die", "die_now"])
def test_a_poison_task_that_kills_its_workers_ends_dead(mosquitto, prefix: str, tmp_path: Path, task: str) -> None:  # type: ignore[no-untyped-def]
    """The first kill makes it a suspect (nothing says it was the culprit), and so does the second
    (its re-run with others: group testing); each of the next three, running alone, convicts it.
    ``die_now`` kills its worker before the worker announces `started` (started_after): it is still
    found out (a worker of its queue died meanwhile)."""
    from tests.coord_helpers import spawn_worker

    url = mosquitto.url
    procs = [spawn_worker(url, prefix, f"p{i}", 1, str(tmp_path / "log")) for i in range(5)]
    try:
        with coordinator(url, prefix) as c, producer(url, prefix) as app:
            wait_until(lambda: len(c.workers()) == 5, 10)
            h = app.submit(task)
            with pytest.raises(TaskDeadError) as info:
                h.result(30)
            assert "killed its worker 3 times running alone" in str(info.value)
            assert sorted(p.wait(10) for p in procs) == [17] * 5
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
