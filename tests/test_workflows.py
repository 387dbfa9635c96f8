"""Workflows on real brokers: each shape end to end, bad input, status, and faults.

Shapes run in process (coordinator, worker and producer) on both brokers. The faults run real
processes on Mosquitto (the embedded broker keeps no session for anonymous clients, so a killed
coordinator's events are not kept for it): a coordinator ``kill -9`` in the middle of a chain, of a
chord's group and of a saga's compensation, and a worker ``kill -9`` in the middle of a step. Runs
are counted from the ledger the task bodies write (tests/flow_tasks.py), not from the coordinator.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from mqtt_tasks import SagaCompensatedError, TaskApp, TaskDeadError, chain, chord, group, saga, step
from mqtt_tasks.config import Settings
from mqtt_tasks.coordinator import Coordinator, query_status
from mqtt_tasks.protocol import codec
from mqtt_tasks.transport import Connection
from mqtt_tasks.worker import Worker
from tests.brokers import wait_until
from tests.coord_helpers import HB, ROOT, settings, spawn_coordinator
from tests.flow_tasks import count, make_flow_app, runs

RESULT_S = 30.0


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    return wait_until(condition, timeout, interval=0.05, message=f"timed out waiting for {what}")


@contextmanager
def cluster(url: str, prefix: str, ledger: str, store: object = None) -> Iterator[TaskApp]:
    """A coordinator, one worker (concurrency 4) and a producer app, all in this process."""
    from tests.chaos_tasks import test_policy

    with Coordinator(settings(url, prefix), store, policy=test_policy(HB)):
        worker = Worker(make_flow_app(url, prefix, ledger), concurrency=4, worker_id="w1", heartbeat_s=HB, grace=2.0)
        worker.start()
        app = make_flow_app(url, prefix)
        try:
            yield app
        finally:
            app.close()
            worker.stop(grace=2.0)


def test_a_chain_passes_results_and_status_shows_its_steps(broker_url: str, prefix: str, tmp_path: Path) -> None:
    ledger = str(tmp_path / "ledger")
    with cluster(broker_url, prefix, ledger) as app:
        add, mul = app.registry["add"], app.registry["mul"]
        handle = chain(add.s(2, 2), add.s(4), mul.s(10)).submit(workflow_id="c1")
        assert handle.result(RESULT_S) == 80
        event = handle.status()
        assert event.state == "succeeded" and event.workflow == "chain"
        assert [(s["id"], s["state"], s["result"]) for s in event.steps or []] == [
            ("c1.0", "succeeded", 4), ("c1.1", "succeeded", 8), ("c1.2", "succeeded", 80)]
        view = query_status(settings(broker_url, prefix), "c1")
        assert view["workflow"] == "chain" and view["state"] == "succeeded"
        assert [s["state"] for s in view["steps"]] == ["succeeded"] * 3
        step_view = query_status(settings(broker_url, prefix), "c1.1")  # a step is an ordinary task
        assert step_view["state"] == "succeeded" and step_view["result"] == 8
        assert app.handle("c1").result(RESULT_S) == 80  # asked again: the coordinator answers from the record
    assert count(ledger, "end") == {"c1.0": 1, "c1.1": 1, "c1.2": 1}


def test_a_failed_step_fails_the_chain(broker_url: str, prefix: str, tmp_path: Path) -> None:
    ledger = str(tmp_path / "ledger")
    with cluster(broker_url, prefix, ledger) as app:
        add, fail = app.registry["add"], app.registry["fail"]
        handle = chain(add.s(1, 1), fail.si("step two"), add.s(1)).submit(workflow_id="c2")
        with pytest.raises(TaskDeadError, match="step two failed"):
            handle.result(RESULT_S)
        assert [s["state"] for s in handle.status().steps or []] == ["succeeded", "dead", "skipped"]
    assert "c2.2" not in runs(ledger)


def test_a_group_and_a_chord(broker_url: str, prefix: str, tmp_path: Path) -> None:
    ledger = str(tmp_path / "ledger")
    with cluster(broker_url, prefix, ledger, str(tmp_path / "c.db")) as app:
        add, total, fail = app.registry["add"], app.registry["total"], app.registry["fail"]
        assert group(add.s(i, i) for i in range(8)).submit(workflow_id="g1").result(RESULT_S) == [
            2 * i for i in range(8)]
        assert chord(group(add.s(i, 1) for i in range(5)), total.s()).submit(workflow_id="h1").result(
            RESULT_S) == 15
        bad = group(add.s(1, 1), fail.si("member one"), add.s(2, 2)).submit(workflow_id="g2")
        with pytest.raises(TaskDeadError, match="member one failed"):
            bad.result(RESULT_S)
        steps = bad.status().steps or []
        assert [s["state"] for s in steps] == ["succeeded", "dead", "succeeded"]
        assert steps[0]["result"] == 2 and steps[2]["result"] == 4 and "member one failed" in steps[1]["reason"]
    ends = count(ledger, "end")
    assert ends["h1.callback"] == 1 and all(ends[f"g1.{i}"] == 1 for i in range(8))


def test_nested_workflows(broker_url: str, prefix: str, tmp_path: Path) -> None:
    """Celery's canvas shapes: a group inside a chain (the next step gets the list of its results),
    parallel chains (each chain's last result), a chord of chains; a failure deep inside fails the
    enclosing workflows and nothing after it runs. Each task once, by the ledger."""
    ledger = str(tmp_path / "ledger")
    with cluster(broker_url, prefix, ledger) as app:
        add, mul, total, fail = (app.registry[n] for n in ("add", "mul", "total", "fail"))
        in_chain = chain(add.s(1, 1), group(add.s(10), add.s(20)), total.s()).submit(workflow_id="n1")
        parallel = group(chain(add.s(1, 1), add.s(1)), chain(add.s(2, 2), mul.s(10))).submit(workflow_id="n2")
        of_chains = chord([chain(add.s(1, 2), add.s(3)), chain(add.s(0, 1), mul.s(5))], total.s()).submit(
            workflow_id="n3")
        broken = chain(add.s(1, 1), group(chain(add.s(1), fail.si("deep")), add.s(5)), add.s(1)).submit(
            workflow_id="n4")
        assert in_chain.result(RESULT_S) == (2 + 10) + (2 + 20)
        assert parallel.result(RESULT_S) == [3, 40]
        assert of_chains.result(RESULT_S) == 6 + 5
        with pytest.raises(TaskDeadError, match="step 1.0.1 \\(fail\\) dead: RuntimeError: deep failed"):
            broken.result(RESULT_S)
        steps = in_chain.status().steps or []
        assert [s["id"] for s in steps] == ["n1.0", "n1.1", "n1.2"] and steps[1]["kind"] == "group"
        assert [(s["id"], s["result"]) for s in steps[1]["steps"]] == [("n1.1.0", 12), ("n1.1.1", 22)]
        view = query_status(settings(broker_url, prefix), "n4")
        assert view["state"] == "dead" and [s["state"] for s in view["steps"]] == ["succeeded", "dead", "skipped"]
        assert [s["state"] for s in view["steps"][1]["steps"][0]["steps"]] == ["succeeded", "dead"]
    ends = count(ledger, "end")
    assert {k: n for k, n in ends.items() if k.startswith("n")} == {
        "n1.0": 1, "n1.1.0": 1, "n1.1.1": 1, "n1.2": 1, "n2.0.0": 1, "n2.0.1": 1, "n2.1.0": 1, "n2.1.1": 1,
        "n3.0.0": 1, "n3.0.1": 1, "n3.1.0": 1, "n3.1.1": 1, "n3.callback": 1, "n4.0": 1, "n4.1.0.0": 1, "n4.1.1": 1}
    assert count(ledger, "start")["n4.1.0.1"] == 1 and "n4.2" not in runs(ledger)


def test_a_saga_compensates_in_reverse_with_retries(broker_url: str, prefix: str, tmp_path: Path) -> None:
    ledger = str(tmp_path / "ledger")
    events: list[str] = []
    follower = Connection(settings(broker_url, prefix), f"follow-{prefix}",
                          on_message=lambda m: events.append(json.loads(m.payload)["state"]))
    follower.subscribe(f"{prefix}/status/s1")
    follower.connect()
    with cluster(broker_url, prefix, ledger) as app:
        charge, refund, reserve, release, fail = (app.registry[n] for n in ("charge", "refund", "reserve", "release",
                                                                            "fail"))
        handle = saga(step(charge.s("o1", 30), compensate=refund.s(fail_until=3)),  # refund fails twice first
                      step(reserve.s("o1"), compensate=release.s()),
                      step(fail.si("shipping"))).submit(workflow_id="s1")
        with pytest.raises(SagaCompensatedError, match="shipping failed") as caught:
            handle.result(RESULT_S)
        status = caught.value.status
        assert status["state"] == "compensated" and "undone: step 0, step 1" in status["reason"]
        assert [s["compensate"]["state"] for s in status["steps"][:2]] == ["succeeded", "succeeded"]
        ok = saga(step(charge.s("o2", 5), compensate=refund.s())).submit(workflow_id="s2")
        assert ok.result(RESULT_S) == ["ch-o2-5"]
        wait_for(lambda: "compensated" in events, 10, "the saga's events on its status topic")
    follower.close()
    assert events == ["compensating", "compensated"]
    order = [line.split()[1] for line in Path(ledger).read_text().splitlines() if line.startswith("end")]
    assert order.index("s1.1.undo") < order.index("s1.0.undo")  # last done, first undone
    assert count(ledger, "fail")["s1.0.undo"] == 2 and count(ledger, "end")["s1.0.undo"] == 1
    assert "s2.0.undo" not in runs(ledger)


def test_a_saga_whose_compensation_cannot_succeed_ends_dead(mosquitto: Any, prefix: str, tmp_path: Path) -> None:
    ledger = str(tmp_path / "ledger")
    with cluster(mosquitto.url, prefix, ledger) as app:
        charge, refund, fail = app.registry["charge"], app.registry["refund"], app.registry["fail"]
        handle = saga(step(charge.s("o3", 1), compensate=refund.s(fail_until=99).set(max_attempts=2)),
                      step(fail.si("payment"))).submit(workflow_id="s3")
        with pytest.raises(TaskDeadError, match="could not undo step 0 \\(charge\\)"):
            handle.result(RESULT_S)
    assert count(ledger, "fail")["s3.0.undo"] == 2


def test_bad_workflows_are_reported_and_the_next_one_runs(mosquitto: Any, prefix: str, tmp_path: Path) -> None:
    errors: list[dict[str, Any]] = []
    listener = Connection(settings(mosquitto.url, prefix), f"errors-{prefix}",
                          on_message=lambda m: errors.append(json.loads(m.payload)))
    listener.subscribe(f"{prefix}/errors")
    listener.connect()
    try:
        with cluster(mosquitto.url, prefix, str(tmp_path / "ledger")) as app:
            conn = app.connection()
            for payload in (b"{not json", b'{"id":"b1","kind":"chord","steps":[{"task":"add"}]}',
                            b'{"id":"b2","kind":"chain","steps":[{"task":"add","args":5}]}'):
                conn.publish(f"{prefix}/workflows", payload)
            wait_for(lambda: len(errors) >= 3, 10, "three error reports")
            assert "needs a callback" in errors[1]["reason"] and errors[1]["topic"] == f"{prefix}/workflows"
            assert "args" in errors[2]["reason"]
            add = app.registry["add"]
            assert chain(add.s(1, 2)).submit(workflow_id="b3").result(RESULT_S) == 3
            again = _Redelivery(conn, prefix)  # the same workflow id once more: nothing runs again
            again.publish({"id": "b3", "kind": "chain", "steps": [{"task": "add", "args": [5, 5]}]})
            assert query_status(settings(mosquitto.url, prefix), "b3")["steps"][0]["result"] == 3
    finally:
        listener.close()
    assert count(str(tmp_path / "ledger"), "end") == {"b3.0": 1}


class _Redelivery:
    def __init__(self, conn: Connection, prefix: str) -> None:
        self._conn, self._topic = conn, f"{prefix}/workflows"

    def publish(self, message: dict[str, Any]) -> None:
        self._conn.publish(self._topic, codec.encode(message))
        assert self._conn.flush(5)


def test_cli_status_of_a_workflow(mosquitto: Any, prefix: str, tmp_path: Path) -> None:
    with cluster(mosquitto.url, prefix, str(tmp_path / "ledger")) as app:
        add = app.registry["add"]
        assert chain(add.s(1, 1), group(add.s(1), add.s(2))).submit(workflow_id="cli1").result(RESULT_S) == [3, 4]
        env = {**os.environ, "PYTHONPATH": ROOT}
        out = subprocess.run([sys.executable, "-m", "mqtt_tasks", "status", "cli1", "--broker", mosquitto.url,
                              "--prefix", prefix], capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        shown = json.loads(out.stdout)
        assert shown["state"] == "succeeded" and [s["id"] for s in shown["steps"]] == ["cli1.0", "cli1.1"]
        nested = shown["steps"][1]  # a nested workflow in place: its kind, state and its own steps
        assert (nested["kind"], nested["state"]) == ("group", "succeeded")
        assert [(s["id"], s["result"]) for s in nested["steps"]] == [("cli1.1.0", 3), ("cli1.1.1", 4)]


# -- faults: real processes on Mosquitto -------------------------------------------------------
def spawn_flow_worker(url: str, prefix: str, worker_id: str, ledger: str) -> subprocess.Popen[str]:
    code = "from tests.flow_tasks import main; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, url, prefix, worker_id, "2", str(HB), ledger], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": ROOT}, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.stdout.close()
    return proc


@contextmanager
def processes(url: str, prefix: str, tmp_path: Path, ledger: str) -> Iterator[dict[str, subprocess.Popen[str]]]:
    procs = {"coordinator": spawn_coordinator(url, prefix, str(tmp_path / "c.db")),
             "w1": spawn_flow_worker(url, prefix, "w1", ledger),
             "w2": spawn_flow_worker(url, prefix, "w2", ledger)}
    try:
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def kill_coordinator_when(procs: dict[str, subprocess.Popen[str]], condition: Callable[[], Any], what: str,
                          url: str, prefix: str, tmp_path: Path) -> None:
    """``kill -9`` the coordinator once ``condition`` holds, then start it again on the same store."""
    wait_for(condition, 30, what)
    procs["coordinator"].kill()
    procs["coordinator"].wait()
    procs["coordinator"] = spawn_coordinator(url, prefix, str(tmp_path / "c.db"))


def test_coordinator_killed_in_the_middle_of_a_chain(mosquitto: Any, prefix: str, tmp_path: Path) -> None:
    ledger = str(tmp_path / "ledger")
    with processes(mosquitto.url, prefix, tmp_path, ledger) as procs:
        app = make_flow_app(mosquitto.url, prefix)
        add = app.registry["add"]
        handle = chain(*(add.s(1, seconds=0.3) if i else add.s(0, 1, seconds=0.3) for i in range(6))).submit(
            workflow_id="k1")
        kill_coordinator_when(procs, lambda: "k1.2" in runs(ledger), "step 2 to start", mosquitto.url, prefix, tmp_path)
        assert handle.result(RESULT_S) == 6
        app.close()
    assert count(ledger, "end") == {f"k1.{i}": 1 for i in range(6)}  # each step once: nothing ran twice


def test_coordinator_killed_in_the_middle_of_a_chords_group(mosquitto: Any, prefix: str, tmp_path: Path) -> None:
    ledger = str(tmp_path / "ledger")
    with processes(mosquitto.url, prefix, tmp_path, ledger) as procs:
        app = make_flow_app(mosquitto.url, prefix)
        add, total = app.registry["add"], app.registry["total"]
        handle = chord(group(add.s(i, 0, seconds=0.4) for i in range(12)), total.s()).submit(workflow_id="k2")
        kill_coordinator_when(procs, lambda: sum(count(ledger, "end").values()) >= 3, "3 members to end",
                              mosquitto.url, prefix, tmp_path)
        assert handle.result(RESULT_S) == sum(range(12))
        app.close()
    assert count(ledger, "end") == {**{f"k2.{i}": 1 for i in range(12)}, "k2.callback": 1}


def test_coordinator_killed_in_the_middle_of_a_sagas_compensation(mosquitto: Any, prefix: str,
                                                                  tmp_path: Path) -> None:
    ledger = str(tmp_path / "ledger")
    with processes(mosquitto.url, prefix, tmp_path, ledger) as procs:
        app = make_flow_app(mosquitto.url, prefix)
        charge, refund, reserve, release, fail = (app.registry[n] for n in ("charge", "refund", "reserve",
                                                                            "release", "fail"))
        handle = saga(step(charge.s("o9", 9), compensate=refund.s(seconds=0.5)),
                      step(reserve.s("o9"), compensate=release.s(seconds=0.5)),
                      step(fail.si("shipping"))).submit(workflow_id="k3")
        kill_coordinator_when(procs, lambda: "k3.1.undo" in runs(ledger), "the first compensation to start",
                              mosquitto.url, prefix, tmp_path)
        with pytest.raises(SagaCompensatedError):
            handle.result(RESULT_S)
        app.close()
    assert count(ledger, "end") == {"k3.0": 1, "k3.1": 1, "k3.1.undo": 1, "k3.0.undo": 1}


def test_coordinator_killed_in_the_middle_of_a_nested_workflow(mosquitto: Any, prefix: str, tmp_path: Path) -> None:
    ledger = str(tmp_path / "ledger")
    with processes(mosquitto.url, prefix, tmp_path, ledger) as procs:
        app = make_flow_app(mosquitto.url, prefix)
        add, total = app.registry["add"], app.registry["total"]
        members = (chain(add.s(i, seconds=0.3), add.s(1, seconds=0.3)) for i in range(4))
        handle = chain(add.s(0, 1, seconds=0.2), group(*members), total.s()).submit(workflow_id="k5")
        kill_coordinator_when(procs, lambda: sum(n for k, n in count(ledger, "end").items() if k.startswith("k5.1."))
                              >= 3, "3 nested steps to end", mosquitto.url, prefix, tmp_path)
        assert handle.result(RESULT_S) == sum(2 + i for i in range(4))
        app.close()
    leaves = {"k5.0": 1, **{f"k5.1.{i}.{j}": 1 for i in range(4) for j in range(2)}, "k5.2": 1}
    assert count(ledger, "end") == leaves  # each task once: nothing ran twice


def test_a_worker_killed_in_the_middle_of_a_step(mosquitto: Any, prefix: str, tmp_path: Path) -> None:
    ledger = str(tmp_path / "ledger")
    with processes(mosquitto.url, prefix, tmp_path, ledger) as procs:
        app = make_flow_app(mosquitto.url, prefix)
        add = app.registry["add"]
        handle = chain(add.s(0, 1), add.s(1, seconds=1.5), add.s(1)).submit(workflow_id="k4")
        started = wait_for(lambda: runs(ledger).get("k4.1"), 30, "step 1 to start")
        victim = next(name for name, proc in procs.items() if proc.pid == started[0][2])
        procs[victim].kill()
        assert handle.result(RESULT_S) == 3
        app.close()
    lines = runs(ledger)
    assert count(ledger, "end") == {"k4.0": 1, "k4.1": 1, "k4.2": 1}
    assert [k for k, _a, _p in lines["k4.1"]].count("start") == 2  # the killed run, and the one that ended


def test_a_workflow_sent_before_any_coordinator_existed_runs_once_one_starts(mosquitto: Any, prefix: str,
                                                                             tmp_path: Path) -> None:
    """No coordinator has ever had a session on this prefix, so the broker drops the workflow
    message; the producer keeps it (a plain task is released once no coordinator shows up, the
    workflow is not) and re-sends it when a coordinator comes online: it runs, each step once. The
    same message published again later gets a receipt again and runs nothing again."""
    ledger = str(tmp_path / "ledger")
    workers = [spawn_flow_worker(mosquitto.url, prefix, "w1", ledger)]
    app = make_flow_app(mosquitto.url, prefix, receipts=True)
    receipts: list[dict[str, Any]] = []
    listener = Connection(settings(mosquitto.url, prefix), f"receipts-{prefix}",
                          on_message=lambda m: receipts.append(json.loads(m.payload)))
    listener.subscribe(f"{prefix}/replies/again/receipts")
    listener.connect()
    coordinator: subprocess.Popen[str] | None = None
    try:
        add, total = app.registry["add"], app.registry["total"]
        handle = chain(add.s(1, 1), add.s(10)).submit(workflow_id="early1")
        chord_handle = chord(group(add.s(i, i) for i in range(3)), total.s()).submit(workflow_id="early2")
        app.send("add", (5, 5), task_id="plain1")  # kept too until the producer decides no coordinator exists
        wait_for(lambda: app.unconfirmed == 2, 30, "the plain task to be released, the workflows kept")
        assert not any(k.startswith("early") for k in runs(ledger))
        coordinator = spawn_coordinator(mosquitto.url, prefix, str(tmp_path / "c.db"))
        assert handle.result(RESULT_S) == 12 and chord_handle.result(RESULT_S) == 6
        wait_for(lambda: app.unconfirmed == 0, 30, "the coordinator's receipts")
        again = chain(add.s(1, 1), add.s(10)).to_message("early1")
        again["receipt_to"] = f"{prefix}/replies/again/receipts"
        _Redelivery(app.connection(), prefix).publish(again)
        wait_for(lambda: any("early1" in r.get("ids", []) for r in receipts), 30, "the receipt of the re-send")
        assert query_status(settings(mosquitto.url, prefix), "early1")["state"] == "succeeded"
    finally:
        app.close()
        listener.close()
        for proc in [*workers, *([coordinator] if coordinator else [])]:
            proc.terminate()
            proc.wait(10)
    ends = {k: n for k, n in count(ledger, "end").items() if k.startswith("early")}
    assert ends == {"early1.0": 1, "early1.1": 1, **{f"early2.{i}": 1 for i in range(3)}, "early2.callback": 1}


def test_with_signing_on_only_a_signed_workflow_runs(mosquitto: Any, prefix: str, tmp_path: Path) -> None:
    """The coordinator signs the steps it publishes, so it must not sign the steps of a workflow
    anyone could publish: an unsigned one is reported on P/errors, a signed one runs."""
    from tests.chaos_tasks import test_policy

    key = "k" * 32
    signed = Settings.from_url(mosquitto.url, prefix=prefix, signing_key=key)
    errors: list[dict[str, Any]] = []
    listener = Connection(settings(mosquitto.url, prefix), f"errors-{prefix}",
                          on_message=lambda m: errors.append(json.loads(m.payload)))
    listener.subscribe(f"{prefix}/errors")
    listener.connect()
    ledger = str(tmp_path / "ledger")
    worker_app = make_flow_app(mosquitto.url, prefix, ledger)
    worker_app.settings = signed
    app = make_flow_app(mosquitto.url, prefix)
    app.settings = signed
    try:
        with Coordinator(signed, None, policy=test_policy(HB)):
            worker = Worker(worker_app, concurrency=2, worker_id="w1", heartbeat_s=HB, grace=2.0)
            worker.start()
            try:
                add = app.registry["add"]
                unsigned = chain(add.s(1, 1)).to_message("u1", app.reply_topic)
                app.connection().publish(f"{prefix}/workflows", codec.encode(unsigned))
                wait_for(lambda: errors, 10, "an error report")
                assert "unsigned" in errors[0]["reason"] and errors[0]["id"] == "u1"
                assert chain(add.s(1, 1), add.s(1)).submit(workflow_id="s1").result(RESULT_S) == 3
            finally:
                worker.stop(grace=2.0)
    finally:
        app.close()
        listener.close()
    assert "u1.0" not in runs(ledger) and count(ledger, "end") == {"s1.0": 1, "s1.1": 1}


def test_a_restarted_coordinator_holds_its_running_workflows_and_finishes_them(mosquitto: Any, prefix: str,
                                                                               tmp_path: Path) -> None:
    """Stopped with a chain half done, started again on the same store: the running workflow is read
    back at start (no store read when its step ends) and finishes; each step ran once."""
    from tests.chaos_tasks import test_policy

    ledger, db = str(tmp_path / "ledger"), str(tmp_path / "c.db")
    app = make_flow_app(mosquitto.url, prefix)
    worker = Worker(make_flow_app(mosquitto.url, prefix, ledger), concurrency=2, worker_id="w1", heartbeat_s=HB,
                    grace=2.0)
    worker.start()
    try:
        add = app.registry["add"]
        with Coordinator(settings(mosquitto.url, prefix), db, policy=test_policy(HB)) as first:
            handle = chain(add.s(1, 1, seconds=0.5), add.s(1, seconds=0.5), add.s(1)).submit(workflow_id="r1")
            wait_for(lambda: "r1.1" in runs(ledger), 20, "step 1 to start")
            assert first.workflow_count == 1
        with Coordinator(settings(mosquitto.url, prefix), db, policy=test_policy(HB)) as second:
            assert second.workflow_count == 1
            assert handle.result(RESULT_S) == 4
            wait_for(lambda: second.workflow_count == 0, 5, "the workflow to leave memory")
    finally:
        worker.stop(grace=2.0)
        app.close()
    assert count(ledger, "end") == {"r1.0": 1, "r1.1": 1, "r1.2": 1}


def test_cancelling_a_workflow(mosquitto: Any, prefix: str, tmp_path: Path) -> None:
    """A chain ends cancelled, its running step stopped and the rest never run; a saga is rolled
    back; cancelling a finished workflow is refused with its state."""
    from mqtt_tasks.coordinator import request_cancel
    from mqtt_tasks.errors import MqttTasksError, TaskCancelledError

    ledger = str(tmp_path / "ledger")
    with cluster(mosquitto.url, prefix, ledger) as app:
        add, charge, refund = app.registry["add"], app.registry["charge"], app.registry["refund"]
        handle = chain(add.s(1, 1), add.s(1, seconds=2.0), add.s(1)).submit(workflow_id="x1")
        wait_for(lambda: "x1.1" in runs(ledger), 20, "step 1 to start")
        handle.cancel("changed plans")
        with pytest.raises(TaskCancelledError, match="changed plans"):
            handle.result(RESULT_S)
        assert [s["state"] for s in handle.status().steps or []] == ["succeeded", "cancelled", "skipped"]
        sg = saga(step(charge.s("o5", 5), compensate=refund.s()), step(add.s(1, 1, seconds=2.0))).submit(
            workflow_id="x2")
        wait_for(lambda: "x2.1" in runs(ledger), 20, "the saga's step 1 to start")
        answer = request_cancel(settings(mosquitto.url, prefix), "x2", "customer left")
        assert answer["ok"] and answer["state"] == "compensating"
        with pytest.raises(SagaCompensatedError, match="customer left"):
            sg.result(RESULT_S)
        with pytest.raises(MqttTasksError, match="it is compensated"):
            request_cancel(settings(mosquitto.url, prefix), "x2")
        nested = chain(add.s(1, 1), group(add.s(1, seconds=2.0), add.s(2, seconds=2.0)), add.s(1)).submit(
            workflow_id="x3")
        wait_for(lambda: "x3.1.0" in runs(ledger) and "x3.1.1" in runs(ledger), 20, "the nested group to start")
        answer = request_cancel(settings(mosquitto.url, prefix), "x3.1", "only the group")
        assert answer["ok"] and answer["state"] == "cancelled"
        with pytest.raises(TaskDeadError, match="step 1 \\(group\\) cancelled: only the group"):
            nested.result(RESULT_S)
        assert [s["state"] for s in nested.status().steps or []] == ["succeeded", "cancelled", "skipped"]
    assert "x1.2" not in runs(ledger) and count(ledger, "end").get("x2.0.undo") == 1
    assert "x3.2" not in runs(ledger) and not any(k.startswith("x3.1.") for k in count(ledger, "end"))


def test_a_shell_client_submits_a_chain_with_mosquitto_pub(mosquitto: Any, prefix: str, tmp_path: Path) -> None:
    """examples/shell/README.md's workflow, with nothing but mosquitto_pub and mosquitto_sub."""
    import shutil

    pub, sub = shutil.which("mosquitto_pub"), shutil.which("mosquitto_sub")
    if pub is None or sub is None:
        pytest.skip("mosquitto_pub / mosquitto_sub are needed")
    port, topic, out = str(mosquitto.port), f"{prefix}-my/replies", tmp_path / "replies"

    def publish(to: str, payload: str) -> None:
        subprocess.run([pub, "-p", port, "-q", "1", "-t", to, "-m", payload], check=True, timeout=10)

    def replies() -> list[str]:
        return out.read_text().splitlines() if out.exists() else []

    with cluster(mosquitto.url, prefix, str(tmp_path / "ledger")), out.open("w") as sink:
        reply = subprocess.Popen([sub, "-p", port, "-t", topic], stdout=sink, text=True)
        try:
            wait_for(lambda: publish(topic, "{}") or replies(), 30, "mosquitto_sub to be subscribed")
            message = {"id": "flow-1", "kind": "chain", "reply_to": topic,
                       "steps": [{"task": "add", "args": [2, 3]}, {"task": "add", "args": [10]}]}
            publish(f"{prefix}/workflows", json.dumps(message))
            line = wait_for(lambda: next((r for r in replies() if '"flow-1"' in r), None), RESULT_S, "the reply")
        finally:
            reply.kill()
            reply.wait()
    event = json.loads(line)
    assert (event["state"], event["result"], event["workflow"]) == ("succeeded", 15, "chain")
    assert count(str(tmp_path / "ledger"), "end") == {"flow-1.0": 1, "flow-1.1": 1}
