"""Receipts: a producer keeps each task until the coordinator recorded it, and re-sends it to the
coordinator alone (``P/record/{queue}``) when the broker may have lost it (issue 13, item 4).

The policy (``receipts.Unconfirmed``, ``leases.on_resent``) is tested with a fake clock; the
mechanism end to end with a real broker, coordinator and worker. The broker crash itself is
``tests/test_faults.py::test_a_broker_crash_before_its_first_autosave_loses_no_acknowledged_task``.
"""

from __future__ import annotations

import json
import queue
import uuid
from pathlib import Path
from typing import Any

from mqtt_tasks import leases
from mqtt_tasks.app import TaskApp
from mqtt_tasks.protocol import codec
from mqtt_tasks.receipts import ReceiptPolicy, Unconfirmed
from mqtt_tasks.store.base import BACKLOG, STARTED, TaskRecord
from mqtt_tasks.transport import Connection, Message
from tests.brokers import wait_until
from tests.chaos_tasks import make_app
from tests.coord_helpers import coordinator, executions, settings, worker

POLICY = ReceiptPolicy(timeout_s=10.0, max_timeouts=2, max_bytes=100)


# -- the policy, pure -------------------------------------------------------------------------
def test_a_receipt_forgets_what_it_confirms() -> None:
    kept = Unconfirmed(POLICY)
    kept.keep("a", "P/record/q", b"x" * 10, 0.0, 1)
    kept.keep("b", "P/record/q", b"y" * 10, 0.0, 1)
    assert kept.confirm(["a", "zz"]) == 1
    assert list(kept.entries) == ["b"] and kept.bytes == 10


def test_memory_is_bounded_by_giving_up_the_oldest() -> None:
    kept = Unconfirmed(POLICY)
    assert kept.keep("a", "t", b"x" * 60, 0.0, 1) == []
    assert kept.keep("b", "t", b"y" * 60, 1.0, 1) == ["a"]
    assert list(kept.entries) == ["b"] and kept.bytes == 60


def test_a_coordinator_back_without_its_session_gets_everything_again() -> None:
    kept = Unconfirmed(POLICY)
    kept.keep("a", "t", b"1", 0.0, 1)
    kept.keep("b", "t", b"2", 5.0, 2)
    assert [i for i, _ in kept.on_online(False, 2, 6.0)] == ["a", "b"]
    assert all(k.sent_at == 6.0 for k in kept.entries.values())  # the timeout restarts from its return


def test_a_coordinator_back_with_its_session_gets_only_what_an_older_connection_sent() -> None:
    kept = Unconfirmed(POLICY)
    kept.keep("a", "t", b"1", 0.0, 1)   # sent before this producer reconnected: the broker may have lost it
    kept.keep("b", "t", b"2", 5.0, 2)
    assert [i for i, _ in kept.on_online(True, 2, 6.0)] == ["a"]
    assert [i for i, _ in kept.on_online(True, 2, 7.0)] == []


def test_no_coordinator_releases_the_tasks_but_keeps_the_workflows() -> None:
    kept = Unconfirmed(POLICY)
    kept.keep("t", "P/record/q", b"1", 0.0, 1)
    kept.keep("wf", "P/workflows", b"22", 0.0, 1, needs_coordinator=True)
    assert kept.release_all() == 1
    assert list(kept.entries) == ["wf"] and kept.bytes == 2
    assert [i for i, _ in kept.on_online(False, 1, 3.0)] == ["wf"]  # the first coordinator gets it


def test_no_receipt_within_the_timeout_re_sends_with_backoff_then_gives_up() -> None:
    kept = Unconfirmed(POLICY)
    kept.keep("a", "t", b"1", 0.0, 1)
    kept.keep("b", "t", b"2", 8.0, 1)
    assert kept.due(9.9, 1) == ([], [])
    resend, give_up = kept.due(10.0, 1)
    assert [i for i, _ in resend] == ["a"] and give_up == [] and list(kept.entries) == ["b", "a"]
    assert [i for i, _ in kept.due(18.0, 1)[0]] == ["b"]
    assert kept.due(29.9, 1) == ([], [])          # a's second wait is 20 s
    assert [i for i, _ in kept.due(30.0, 1)[0]] == ["a"]
    resend, give_up = kept.due(100.0, 1)
    assert [i for i, _ in resend] == ["b"] and give_up == ["a"]  # a had its max_timeouts re-sends
    assert kept.due(140.0, 1) == ([], ["b"])
    assert len(kept) == 0 and kept.bytes == 0


def test_a_re_sent_task_the_coordinator_never_saw_joins_the_backlog_as_the_next_attempt() -> None:
    record = TaskRecord(id="t1", created=0.0, updated=0.0)
    effects = leases.on_resent(record, {"id": "t1", "task": "work", "attempt": 1}, False, 1.0)
    assert effects == [leases.Enqueue("t1")]
    assert record.state == BACKLOG and record.attempt == 2 and record.body is not None


def test_a_re_sent_task_the_coordinator_knows_changes_nothing() -> None:
    record = TaskRecord(id="t1", created=0.0, updated=0.0, state=STARTED, attempt=1, worker="w1")
    assert leases.on_resent(record, {"id": "t1", "task": "work"}, True, 1.0) == []
    assert record.state == STARTED and record.attempt == 1 and record.worker == "w1"


# -- end to end, with a real broker -------------------------------------------------------------
def listen(url: str, prefix: str, *topics: str) -> tuple[Connection, queue.SimpleQueue[Message]]:
    got: queue.SimpleQueue[Message] = queue.SimpleQueue()
    conn = Connection(settings(url, prefix), f"listen-{uuid.uuid4().hex[:8]}", on_message=got.put)
    for topic in topics:
        conn.subscribe(topic)
    return conn.connect(), got


def drain(got: queue.SimpleQueue[Message]) -> list[Message]:
    out = []
    while not got.empty():
        out.append(got.get())
    return out


def test_one_receipt_per_topic_and_commit() -> None:
    from mqtt_tasks.coordinator.backlog import Backlog
    from mqtt_tasks.coordinator.effects import RECEIPT_IDS, Effects
    from mqtt_tasks.coordinator.fleet import Fleet
    from mqtt_tasks.protocol.topics import Topics

    policy, stats = leases.LeasePolicy(), dict.fromkeys(("cancels", "dead", "expired", "retried"), 0)
    effects = Effects(settings("mqtt://127.0.0.1:1", "P"), Topics("P"), "c", Backlog(policy, Fleet(policy), stats),
                      lambda: 1.0, stats)
    for i in range(RECEIPT_IDS + 5):
        effects.receipt("P/replies/a/receipts", f"t{i}")
    effects.receipt("P/replies/b/receipts", "x")
    effects.receipt("P/tasks/q", "refused")  # the reply guard: never onto the prefix's own topics
    out = [(topic, json.loads(payload)["ids"]) for topic, payload, _ in effects.take()]
    assert [(topic, len(ids)) for topic, ids in out] == [("P/replies/a/receipts", RECEIPT_IDS),
                                                         ("P/replies/a/receipts", 5), ("P/replies/b/receipts", 1)]
    assert effects.take() == []


def test_a_coordinator_back_with_its_session_confirms_the_tasks_queued_for_it(mosquitto, prefix: str) -> None:  # type: ignore[no-untyped-def]
    with coordinator(mosquitto.url, prefix):
        pass  # its persistent session subscribed P/tasks/+ and stays while it is down
    with make_app(mosquitto.url, prefix) as app:
        conn, got = listen(mosquitto.url, prefix, app.receipt_topic)
        try:
            ids = [app.submit("work", f"t{i}").id for i in range(300)]  # queued for the coordinator only
            assert app.flush(10) and app.unconfirmed == 300
            receipts: list[dict[str, Any]] = []

            def all_seen() -> bool:  # the producer has them all: this listener may still lag behind it
                receipts.extend(json.loads(m.payload) for m in drain(got))
                return {i for r in receipts for i in r["ids"]} >= set(ids)

            with coordinator(mosquitto.url, prefix):
                assert app.wait_recorded(15), f"{app.unconfirmed} tasks never confirmed"
                wait_until(all_seen, 15, message="the listener never saw every receipt")
            receipts += [json.loads(m.payload) for m in drain(got)]
        finally:
            conn.close()
    confirmed = [i for r in receipts for i in r["ids"]]
    assert sorted(confirmed) == sorted(ids)  # each once: with its session resumed, nothing was re-sent
    assert len(receipts) < 30, f"{len(receipts)} receipts for a burst of 300 tasks: not batched"


def test_without_a_coordinator_nothing_is_kept(broker_url: str, prefix: str) -> None:
    policy = ReceiptPolicy(presence_wait_s=0.3)
    with TaskApp(broker_url, prefix=prefix, receipt_policy=policy) as app:
        conn, got = listen(broker_url, prefix, f"{prefix}/tasks/+")
        try:
            app.send("work", ["early"])
            assert app.wait_recorded(5)  # no presence came: given back to best effort, not waited for
            app.send("work", ["late"])
            wait_until(lambda: got.qsize() >= 2, 5)
            bodies = [codec.decode_task(m.payload) for m in drain(got)]
        finally:
            conn.close()
    assert bodies[0].receipt_to == app.receipt_topic  # before the presence wait was over
    assert bodies[1].receipt_to is None and app.unconfirmed == 0


def test_a_re_send_runs_a_known_task_once_and_an_unknown_one_once(broker_url: str, prefix: str,
                                                                    tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    with coordinator(broker_url, prefix), worker(broker_url, prefix, "w1", log=log), \
            make_app(broker_url, prefix) as app:
        conn, got = listen(broker_url, prefix, app.receipt_topic)
        try:
            known = app.submit("work", "known")
            assert known.result(15) == "known"
            resend = {"id": known.id, "task": "work", "args": ["known"], "receipt_to": app.receipt_topic}
            lost = {"id": "lost-1", "task": "work", "args": ["lost"], "receipt_to": app.receipt_topic}
            for body in (resend, lost):  # as TaskApp re-sends: to the coordinator alone
                conn.publish(f"{prefix}/record/default", codec.encode(body))
            wait_until(lambda: executions(log).get("lost"), 15, message="the re-sent unknown task never ran")
            receipted = {i for m in drain(got) for i in json.loads(m.payload)["ids"]}
            app.send("work", ["after"]).result(15)  # anything the re-sends could still cause has happened
        finally:
            conn.close()
    runs = executions(log)
    assert [kind for kind, _ in runs["known"]].count("end") == 1
    assert [kind for kind, _ in runs["lost"]].count("end") == 1
    assert {known.id, "lost-1"} <= receipted | {i for m in drain(got) for i in json.loads(m.payload)["ids"]}
