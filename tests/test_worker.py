"""The worker against real brokers: plain MQTT producers, queues, $share, reconnects, shutdown,
heartbeats and Last Will, bad input, async tasks, time limits, the concurrency bound."""

from __future__ import annotations

import json
import logging
import queue
import shutil
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from mqtt_tasks import Settings, TaskApp, TaskFailedError, Worker
from mqtt_tasks.transport import Connection
from tests.brokers import MosquittoProcess, wait_until
from tests.tasks_fixture import BAD_TASKS, DEADLINE, Harness, Listener


@pytest.fixture
def h(broker_url: str, prefix: str) -> Iterator[Harness]:
    with Harness(broker_url, prefix) as harness:
        yield harness


def _task(task_id: str, name: str = "add", **fields: Any) -> bytes:
    return json.dumps({"id": task_id, "task": name, **fields}).encode()


def _states(listener: Listener, topic: str) -> list[str]:
    return [m.json()["state"] for m in listener.on(topic)]


# -- plain MQTT producers ---------------------------------------------------------------------------


def test_plain_mqtt311_client_publishes_and_reads_the_result(h: Harness) -> None:
    h.worker(concurrency=2, started_after=0)  # `started` at once, as Celery's task_track_started
    task_id, reply = f"job-{uuid.uuid4().hex[:6]}", h.topics.replies("plain-311")
    client = h.listener(h.topics.status(task_id), reply)
    client.publish(h.topics.tasks("default"), _task(task_id, args=[2, 3], reply_to=reply, correlation="c-1"))
    final = client.wait_json(reply)
    assert (final["id"], final["state"], final["result"], final["final"]) == (task_id, "succeeded", 5, True)
    assert final["correlation"] == "c-1"
    done = client.wait_json(h.topics.status(task_id), lambda e: e["state"] == "succeeded")
    assert done["result"] == 5 and done["worker"] == h.workers[0].worker_id and done["attempt"] == 1
    assert _states(client, h.topics.status(task_id))[0] == "started"


def test_plain_mqtt5_client_gets_response_topic_and_correlation_data(mosquitto: MosquittoProcess,
                                                                     prefix: str) -> None:
    with Harness(mosquitto.url, prefix) as h:
        h.worker(concurrency=2)
        task_id, reply = "job-v5", h.topics.replies("plain-v5")
        client = h.listener(reply, h.topics.status(task_id), mqtt5=True)
        client.publish(h.topics.tasks("default"), _task(task_id, args=[20, 22]),
                       response_topic=reply, correlation_data=b"\x01corr")
        client.wait_json(reply)
        (answer,) = client.on(reply)
        assert answer.json()["result"] == 42 and answer.json()["final"] is True
        assert answer.correlation_data == b"\x01corr"
        assert client.wait_json(h.topics.status(task_id), lambda e: e["state"] == "succeeded")["result"] == 42


@pytest.mark.skipif(not (shutil.which("mosquitto_pub") and shutil.which("mosquitto_sub")),
                    reason="mosquitto_pub / mosquitto_sub not installed (apt-get install mosquitto-clients)")
def test_mosquitto_pub_and_sub(mosquitto: MosquittoProcess, prefix: str) -> None:
    """The README's shell example, with the real command-line clients."""
    with Harness(mosquitto.url, prefix) as h:
        h.worker(concurrency=1)
        port = str(mosquitto.port)
        sub = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", port, "-q", "1", "-v", "-W", "30",
             "-t", f"{prefix}/status/job-1", "-t", f"{prefix}/ping"],
            stdout=subprocess.PIPE, text=True)
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(line) for line in sub.stdout or ()], daemon=True)
        reader.start()
        try:
            pinger = h.listener()
            # mosquitto_sub has subscribed once it echoes a ping
            deadline = time.monotonic() + DEADLINE
            while True:
                pinger.publish(f"{prefix}/ping", b"ping")
                try:
                    if lines.get(timeout=0.2).startswith(f"{prefix}/ping"):
                        break
                except queue.Empty:
                    assert time.monotonic() < deadline, "mosquitto_sub never subscribed"
            subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-q", "1",
                            "-t", f"{prefix}/tasks/default", "-m", '{"id":"job-1","task":"add","args":[2,3]}'],
                           check=True, timeout=DEADLINE)
            while True:
                line = lines.get(timeout=DEADLINE)
                if line.startswith(f"{prefix}/status/job-1 ") and '"succeeded"' in line:
                    break
            event = json.loads(line.split(" ", 1)[1])
            assert event["result"] == 5 and event["id"] == "job-1"
        finally:
            sub.terminate()
            sub.wait(DEADLINE)
            reader.join(DEADLINE)
            if sub.stdout is not None:
                sub.stdout.close()


def test_started_is_sent_only_for_tasks_still_running_after_started_after(h: Harness) -> None:
    h.worker(concurrency=2, started_after=0.3)
    client = h.listener(h.topics.status("+"))
    quick, held = "quick-1", "held-1"
    client.publish(h.topics.tasks("default"), _task(quick, args=[1, 2]))
    client.publish(h.topics.tasks("default"), _task(held, "hold", args=[held]))
    h.probe.wait_started(held)
    client.wait_json(h.topics.status(quick), lambda e: e["state"] == "succeeded")
    started = client.wait_json(h.topics.status(held), lambda e: e["state"] == "started")
    assert started["attempt"] == 1 and started["worker"] == h.workers[0].worker_id
    h.probe.gate.set()
    client.wait_json(h.topics.status(held), lambda e: e["state"] == "succeeded")
    assert _states(client, h.topics.status(quick)) == ["succeeded"]
    assert _states(client, h.topics.status(held)) == ["started", "succeeded"]


# -- queues and shared subscriptions ----------------------------------------------------------------


def test_worker_takes_only_its_queues(h: Harness) -> None:
    math_worker = h.worker(queues=["math"], concurrency=2, worker_id=f"w-math-{h.prefix}")
    default_worker = h.worker(queues=["default"], concurrency=2, worker_id=f"w-default-{h.prefix}")
    status = h.listener(h.topics.all_status)
    adds = [h.app.registry["add"].submit(i, i) for i in range(10)]
    muls = [h.app.registry["math.mul"].submit(i, i) for i in range(10)]
    assert [a.result(DEADLINE) for a in adds] == [2 * i for i in range(10)]
    assert [m.result(DEADLINE) for m in muls] == [i * i for i in range(10)]
    status.wait_finished(h.topics.status(x.id) for x in adds + muls)
    for handles, owner in ((adds, default_worker), (muls, math_worker)):
        for handle in handles:
            workers = {m.json()["worker"] for m in status.on(h.topics.status(handle.id))}
            assert workers == {owner.worker_id}, f"{handle.name} {handle.id} ran on {workers}"


def test_shared_group_runs_each_task_once_across_workers(h: Harness) -> None:
    """Several workers in one $share group (the embedded broker's $share extension included):
    every task runs exactly once and every worker takes some."""
    workers = [h.worker(concurrency=2, worker_id=f"w{i}-{h.prefix}") for i in range(3)]
    status = h.listener(h.topics.all_status)
    handles = [h.app.registry["add"].submit(i, 0) for i in range(60)]
    assert [x.result(DEADLINE) for x in handles] == list(range(60))
    status.wait_finished(h.topics.status(x.id) for x in handles)
    runs: Counter[int] = Counter()
    owners: Counter[str] = Counter()
    for handle in handles:
        events = [m.json() for m in status.on(h.topics.status(handle.id))]
        finished = [e for e in events if e["state"] == "succeeded"]  # every run ends in one
        runs[len(finished)] += 1
        owners[finished[0]["worker"]] += 1
    assert runs == {1: 60}, "each task ran exactly once"
    assert set(owners) == {w.worker_id for w in workers}, f"tasks per worker: {dict(owners)}"


# -- time limits, async tasks, the concurrency bound --------------------------------------------------


def test_async_tasks(h: Harness) -> None:
    h.worker(concurrency=4)
    handles = [h.app.registry["async_add"].submit(i, 1) for i in range(20)]
    assert [x.result(DEADLINE) for x in handles] == [i + 1 for i in range(20)]


@pytest.mark.parametrize("name", ["spin", "async_nap"])
def test_task_past_its_timeout_fails_and_the_worker_goes_on(h: Harness, name: str) -> None:
    h.worker(concurrency=1)
    started = time.monotonic()
    slow = h.app.registry[name].submit_with([30], timeout=0.3)
    with pytest.raises(TaskFailedError) as info:
        slow.result(DEADLINE)
    assert info.value.error_type == "TaskTimeLimitExceeded"
    assert time.monotonic() - started < 5, "reported at the deadline, not when the body ends"
    # the only slot is free again: the next task runs on the same worker
    assert h.app.registry["add"].submit(1, 2).result(DEADLINE) == 3
    h.probe.wait_for(lambda p: p.running == 0, what="the timed-out body has really stopped")


def test_an_exception_that_cannot_be_described_still_fails_the_task_and_frees_the_slot(h: Harness) -> None:
    h.worker(concurrency=1)
    with pytest.raises(TaskFailedError) as info:
        h.app.registry["unprintable"].submit().result(DEADLINE)
    assert info.value.error_type == "Unprintable" and "str() failed with RuntimeError" in str(info.value)
    assert h.app.registry["add"].submit(1, 2).result(DEADLINE) == 3  # the only slot is free again


def test_a_traceback_that_cannot_be_formatted_is_reported_from_its_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPython 3.11.7's AST race (python/cpython#106905) makes ``format_exception`` raise now and then."""
    from mqtt_tasks import execution

    def broken(*_a: Any, **_k: Any) -> list[str]:
        raise SystemError("AST constructor recursion depth mismatch (before=1, after=2)")

    try:
        {}["missing"]
    except KeyError as exc:
        monkeypatch.setattr(execution.traceback, "format_exception", broken)
        outcome = execution.Outcome.from_exception(exc)
    assert (outcome.ok, outcome.error_type, outcome.error_message) == (False, "KeyError", "'missing'")
    assert outcome.traceback is not None and "in test_a_traceback_that_cannot_be_formatted" in outcome.traceback
    assert outcome.traceback.endswith("KeyError: 'missing'\n")


def test_concurrency_bound(h: Harness) -> None:
    h.worker(concurrency=2)
    handles = [h.app.registry["tracked"].submit(f"k{i}", 0.05) for i in range(12)]
    assert [x.result(DEADLINE) for x in handles] == [f"k{i}" for i in range(12)]
    assert h.probe.max_running == 2, f"at most 2 at once (and the pool was used): saw {h.probe.max_running}"


# -- bad input -------------------------------------------------------------------------------------------

BAD_INPUT = {
    **BAD_TASKS,
    "oversize": (json.dumps({"id": "big", "task": "add", "args": ["x" * 300_000]}).encode(), "exceeds"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_reported_and_the_next_task_runs(h: Harness, case: str) -> None:
    payload, reason = BAD_INPUT[case]
    worker = h.worker(concurrency=1)
    client = h.listener(h.topics.errors)
    client.publish(h.topics.tasks("default"), payload)
    report = client.wait_json(h.topics.errors)
    assert reason in report["reason"], report
    assert report["topic"] == h.topics.tasks("default")
    assert report["component"] == "worker" and report["source"] == worker.worker_id
    assert report["size"] == len(payload)
    assert h.app.registry["add"].submit(2, 2).result(DEADLINE) == 4


# -- heartbeats, Last Will, reconnect, graceful shutdown --------------------------------------------------


def test_heartbeat_lists_held_tasks_and_last_will_says_offline(h: Harness) -> None:
    worker = h.worker(concurrency=3, worker_id=f"hb-{h.prefix}")
    topic = h.topics.worker(worker.worker_id)
    handle = h.app.registry["hold"].submit("hb")
    h.probe.wait_started("hb")
    watcher = h.listener(topic)
    state = watcher.wait_json(topic, lambda s: [t for t in s["tasks"] if t["id"] == handle.id])
    assert state["state"] == "online" and state["worker"] == worker.worker_id
    assert sorted(state["queues"]) == ["default", "math"]
    assert (state["concurrency"], state["free"], state["heartbeat_s"]) == (3, 2, 0.2)
    assert state["tasks"][0]["attempt"] == 1
    assert watcher.on(topic)[0].retain, "the first heartbeat a late subscriber gets is the retained one"

    worker.connection.abort()  # a crash: no DISCONNECT, so the broker publishes the Last Will
    will = watcher.wait_json(topic, lambda s: s["state"] == "offline")
    assert will["worker"] == worker.worker_id and will["tasks"] == []
    late = h.listener(topic)
    assert late.wait_json(topic)["state"] == "offline", "the Last Will is retained"


def test_snapshot_says_what_the_worker_holds(h: Harness) -> None:
    worker = h.worker(concurrency=2, worker_id=f"snap-{h.prefix}")
    assert worker.snapshot().state == "online" and not worker.coordinator_online
    handle = h.app.registry["hold"].submit("snap")
    h.probe.wait_started("snap")
    snap = worker.snapshot()
    assert [(a.id, a.attempt) for a in snap.held] == [(handle.id, 1)] and worker.held == [handle.id]
    assert (snap.worker_id, snap.concurrency, snap.free, snap.waiting) == (worker.worker_id, 2, 1, 0)
    assert snap.stats["started"] == 1 and snap.stats == worker.stats
    h.probe.gate.set()
    assert handle.result(DEADLINE) == "snap"
    wait_until(lambda: worker.snapshot().free == 2, DEADLINE, message="the slot was never given back")
    assert worker.stats["succeeded"] == 1
    worker.stop()
    assert worker.snapshot().state == "offline"


def _restart(broker: Any, broker_kind: str, request: pytest.FixtureRequest) -> None:
    if broker_kind == "mosquitto":
        broker.restart()
        return
    from mqtt_tasks.broker import EmbeddedBroker

    port = broker.port
    broker.stop()
    replacement = EmbeddedBroker(port=port).start()
    request.addfinalizer(replacement.stop)


def test_worker_reconnects_after_a_broker_restart(broker: Any, broker_kind: str, prefix: str,
                                                  request: pytest.FixtureRequest) -> None:
    with Harness(broker.url, prefix) as h:
        worker = h.worker(concurrency=2, worker_id=f"rc-{prefix}")
        assert h.app.registry["add"].submit(1, 1).result(DEADLINE) == 2
        _restart(broker, broker_kind, request)
        restarted = time.time()
        watcher = h.listener(h.topics.worker(worker.worker_id))
        # the first heartbeat after the restart proves the worker is back; it is sent after the
        # re-subscription on the same connection, so the broker has that subscription by then
        watcher.wait_json(h.topics.worker(worker.worker_id),
                          lambda s: s["state"] == "online" and s["ts"] > restarted)
        # and the producer's reply subscription is back: amqtt keeps no session, and it may route
        # a reply before registering a SUBSCRIBE sent just ahead of the task (docs/operations.md)
        assert h.app.connection().wait_ready(DEADLINE)
        handles = [h.app.registry["add"].submit(i, 1) for i in range(10)]
        assert [x.result(DEADLINE) for x in handles] == [i + 1 for i in range(10)]


def test_graceful_stop_finishes_running_hands_back_waiting(h: Harness) -> None:
    """stop() while a slow task runs: tasks not started go to another worker, the running one
    finishes and its result is delivered, then the retained state says offline."""
    first = h.worker(concurrency=1, worker_id=f"a-{h.prefix}")
    slow = h.app.registry["hold"].submit("slow")
    h.probe.wait_started("slow")
    status = h.listener(h.topics.all_status)
    waiting = [h.app.registry["add"].submit(i, 100) for i in range(5)]  # `first` has no free slot
    wait_until(lambda: first.snapshot().waiting == 5, DEADLINE, message="the tasks never reached the busy worker")
    second = h.worker(concurrency=2, worker_id=f"b-{h.prefix}")
    states = h.listener(h.topics.worker(first.worker_id))
    stopper = threading.Thread(target=first.stop, kwargs={"grace": DEADLINE}, name="stopper")
    stopper.start()
    assert [x.result(DEADLINE) for x in waiting] == [i + 100 for i in range(5)]
    status.wait_finished(h.topics.status(x.id) for x in waiting)
    for handle in waiting:
        ran_on = {m.json()["worker"] for m in status.on(h.topics.status(handle.id)) if m.json()["state"] == "succeeded"}
        assert ran_on == {second.worker_id}
    assert not slow.done() and stopper.is_alive(), "the slow task is still running, stop() waits for it"
    states.wait_json(h.topics.worker(first.worker_id), lambda s: s["state"] == "draining")
    h.probe.gate.set()
    assert slow.result(DEADLINE) == "slow"
    stopper.join(DEADLINE)
    assert not stopper.is_alive()
    final = states.wait_json(h.topics.worker(first.worker_id), lambda s: s["state"] == "offline")
    assert final["tasks"] == []
    late = h.listener(h.topics.worker(first.worker_id))
    retained = late.wait_for(lambda ms: ms, what="the retained worker state")[0]
    assert retained.retain and retained.json()["state"] == "offline"
    assert first.wait_stopped(0)


def test_graceful_stop_delivers_a_result_published_at_the_last_moment(h: Harness) -> None:
    """The result of a task finishing during stop() must be published before stop() may close the
    connection. A delay injected between the task's end and its status publish would let a worker
    that forgets the task first disconnect first, and the result would be lost."""

    class LateResults(Connection):
        """Holds each final status event back until close() begins (bounded: with the fix stop()
        waits for this publish, so the hold lasts its full second)."""

        closing = threading.Event()

        def close(self, flush_timeout: float = 5.0) -> None:
            self.closing.set()
            super().close(flush_timeout)

        def publish(self, topic: str, payload: bytes, **kwargs: Any) -> int:
            if topic.startswith(h.topics.status_root) and json.loads(payload)["state"] in ("succeeded", "failed"):
                self.closing.wait(1.0)
            return super().publish(topic, payload, **kwargs)

    workers: list[Worker] = []
    conn = LateResults(h.app.settings, f"late-{h.prefix}", manual_ack=True,
                       on_message=lambda message: workers[0].receive(message))
    worker = Worker(h.app, concurrency=1, worker_id=f"late-{h.prefix}", heartbeat_s=0.2, connection=conn)
    workers.append(worker)
    h.workers.append(worker.start())
    handle = h.app.registry["hold"].submit("last")
    h.probe.wait_started("last")
    stopper = threading.Thread(target=worker.stop, kwargs={"grace": DEADLINE}, name="stopper")
    stopper.start()
    h.probe.gate.set()
    assert handle.result(DEADLINE) == "last"
    stopper.join(DEADLINE)


def test_stopped_worker_leaves_no_task_behind(h: Harness) -> None:
    """stop() on an idle worker returns promptly and a second stop is harmless."""
    worker: Worker = h.worker(concurrency=1)
    assert h.app.registry["add"].submit(1, 1).result(DEADLINE) == 2
    started = time.monotonic()
    worker.stop(grace=1)
    worker.stop(grace=1)
    assert time.monotonic() - started < 3
    assert worker.held == []


def test_a_broker_without_shared_subscriptions_is_named_at_start(
        monkeypatch: pytest.MonkeyPatch, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    """Stock amqtt (like NATS, aedes and RabbitMQ 3.x) grants `$share/...` and routes nothing
    through it: the worker says so at start, in its log and on P/errors, instead of waiting in silence."""
    from amqtt.broker import Broker

    from mqtt_tasks import broker as embedded

    monkeypatch.setattr(embedded, "_SharedSubscriptionBroker", Broker)  # amqtt without this project's $share
    with embedded.EmbeddedBroker() as broker:
        settings = Settings.from_url(broker.url, prefix=prefix)
        reports = Listener(broker.url, [f"{prefix}/errors"]).start()
        app = TaskApp(settings=settings)
        try:
            with caplog.at_level(logging.WARNING, logger="mqtt_tasks.worker"), \
                    Worker(app, worker_id="w-noshare", settings=settings):
                wait_until(lambda: reports.messages, DEADLINE, message="no report on P/errors")
            assert "does not support $share" in caplog.text
            assert b"does not support $share" in reports.messages[0].payload
        finally:
            reports.close()
            app.close()


def test_a_broker_with_shared_subscriptions_passes_the_probe_quietly(
        broker_url: str, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    app = TaskApp(settings=Settings.from_url(broker_url, prefix=prefix))
    try:
        with caplog.at_level(logging.WARNING, logger="mqtt_tasks.worker"), Worker(app, worker_id="w-share") as w:
            assert w.snapshot().state == "online"
        assert "$share" not in caplog.text
    finally:
        app.close()


def test_each_finished_task_is_one_info_line(broker_url: str, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    """`mqtt-worker` logs at INFO: a Celery user expects `add[id] succeeded in 0.001s` there."""
    with Harness(broker_url, prefix) as h:
        h.worker(concurrency=2)
        with caplog.at_level(logging.INFO, logger="mqtt_tasks.worker"):
            ok = h.app.registry["add"].submit(2, 3)
            assert ok.result(timeout=DEADLINE) == 5
            bad = h.app.registry["boom"].submit("no")
            with pytest.raises(TaskFailedError):
                bad.result(timeout=DEADLINE)
        lines = [r.getMessage() for r in caplog.records]
        assert any(f"add[{ok.id}] succeeded in " in line and "s (attempt 1)" in line for line in lines), lines
        assert any(f"boom[{bad.id}] failed in " in line and "no" in line for line in lines), lines


# -- a stop whose grace runs out: hand back, and never report the stale attempt ------------------------


def test_a_task_past_the_grace_is_handed_back_as_the_next_attempt_and_its_late_result_never_published(
        h: Harness) -> None:
    """No coordinator online: the attempt goes back onto its queue as attempt 2 before stop()
    returns; the stale body, still blocked in C code, returns later and nothing of it is published."""
    first = h.worker(concurrency=1, worker_id=f"a-{h.prefix}")
    status = h.listener(h.topics.all_status)
    handle = h.app.registry["hold"].submit("late")
    h.probe.wait_started("late")
    second = h.worker(concurrency=1, worker_id=f"b-{h.prefix}")
    started = time.monotonic()
    first.stop(grace=0.3)
    assert time.monotonic() - started < 3
    assert first.stats["handed_back"] == 1 and first.stale_runs == 1
    h.probe.wait_for(lambda p: p.started.count("late") == 2, what="attempt 2 started on the second worker")
    h.probe.gate.set()
    assert handle.result(DEADLINE) == "late"
    h.probe.wait_for(lambda p: p.finished.count("late") == 2, what="both bodies returned")
    wait_until(lambda: first.stale_runs == 0, DEADLINE)
    status.wait_json(h.topics.status(handle.id), lambda e: e["state"] == "succeeded")
    finals = [m.json() for m in status.on(h.topics.status(handle.id)) if m.json()["state"] != "started"]
    assert [(e["state"], e["attempt"], e["worker"]) for e in finals] == [("succeeded", 2, second.worker_id)]


def test_an_async_task_past_the_grace_is_cancelled_and_handed_back(h: Harness) -> None:
    worker = h.worker(concurrency=1)
    queue_topic = h.listener(h.topics.tasks("default"))
    h.app.registry["async_nap"].submit(30)
    h.probe.wait_started("async_nap")
    worker.stop(grace=0.3)
    h.probe.wait_for(lambda p: "async_nap" in p.finished, what="the coroutine cancelled")
    assert worker.stale_runs == 0
    again = queue_topic.wait_json(h.topics.tasks("default"), lambda t: t.get("attempt") == 2)
    assert again["task"] == "async_nap" and again["args"] == [30]


def test_hurry_cuts_a_stop_short(h: Harness) -> None:
    """What a second Ctrl-C does (supervisor.serve): hand back what runs now, not after the grace."""
    worker = h.worker(concurrency=1)
    h.app.registry["hold"].submit("hurried")
    h.probe.wait_started("hurried")
    stopper = threading.Thread(target=worker.stop, kwargs={"grace": 60.0}, name="stopper")
    started = time.monotonic()
    stopper.start()
    wait_until(lambda: worker.snapshot().state == "draining", DEADLINE)
    worker.hurry()
    stopper.join(DEADLINE)
    assert not stopper.is_alive() and time.monotonic() - started < 10
    assert worker.stats["handed_back"] == 1
# -- suspects run alone ------------------------------------------------------------------------------


def test_a_task_sent_alone_waits_for_the_running_ones_and_runs_with_nothing_else(h: Harness) -> None:
    """A suspect (lost with a worker before) comes from the coordinator marked ``alone``: it starts
    once the running tasks are done, nothing starts beside it, and its `started` event (published,
    and acknowledged by the broker, before its body runs) says so."""
    worker = h.worker(concurrency=3, started_after=5.0)
    status = h.listener(h.topics.all_status)
    before = h.app.registry["hold"].submit("before")
    h.probe.wait_started("before")
    status.publish(h.topics.inbox(worker.worker_id),
                   _task("suspect-1", "tracked", args=["alone", 0.05], alone=True, attempt=2))
    wait_until(lambda: worker.snapshot().free == 0, DEADLINE, message="the worker still offers free slots")
    after = h.app.registry["tracked"].submit("after", 0.0)
    wait_until(lambda: worker.snapshot().waiting == 1, DEADLINE, message="the next task did not wait its turn")
    assert h.probe.started == ["before"]
    h.probe.gate.set()
    assert (before.result(DEADLINE), after.result(DEADLINE)) == ("before", "after")
    status.wait_finished([h.topics.status("suspect-1")])
    assert h.probe.started == ["before", "alone", "after"] and h.probe.max_running == 1
    started = status.wait_json(h.topics.status("suspect-1"), lambda e: e["state"] == "started")
    assert started["alone"] is True and started["attempt"] == 2
    # A run reports its outcome before its thread gives the slot back (execution.py): the reply
    # can arrive first, so the slots are waited for, not read at once.
    wait_until(lambda: worker.snapshot().free == 3, DEADLINE, message="the worker never offered its slots again")
