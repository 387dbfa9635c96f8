"""Capability routing (docs/routing.md): labels, ``requires``, the coordinator's lanes, the routed
topics without a coordinator. Who ran what is read from the ledger the task bodies write
(tests/routing_tasks.py), never from events alone."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mqtt_tasks import TaskApp, Worker
from mqtt_tasks.app import requires_field
from mqtt_tasks.cli import cli, worker_command
from mqtt_tasks.coordinator import query_status, routing
from mqtt_tasks.errors import ConfigError, TaskFailedError
from mqtt_tasks.leases import WorkerView
from mqtt_tasks.protocol import labels, validate
from mqtt_tasks.protocol.messages import Task
from mqtt_tasks.protocol.states import BACKLOG
from mqtt_tasks.store.base import TaskRecord
from mqtt_tasks.worker.intake import UNMATCHED, judge
from tests import routing_tasks
from tests.brokers import wait_until
from tests.coord_helpers import HB, coordinator, registry_worker, settings
from tests.test_cli import Proc, assert_one_line_error
from tests.test_request_response import PlainClient

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 20.0


# -- pure: the labels, the lanes, the verdict ------------------------------------------------------

def test_a_worker_subscribes_every_combination_of_up_to_three_of_its_labels() -> None:
    assert labels.combinations(["gpu", "camera"]) == ["camera", "gpu", "camera,gpu"]
    assert len(labels.combinations([f"l{i}" for i in range(8)])) == 8 + 28 + 56
    assert labels.routed_level(["gpu", "camera"]) == "camera,gpu"  # what the producer publishes to


def test_lanes_keep_the_queue_and_the_sorted_labels() -> None:
    assert labels.lane("q", []) == "q"
    assert labels.lane("q", ["gpu", "camera"]) == "q/camera,gpu"
    assert labels.parse_lane("q/camera,gpu") == ("q", frozenset({"camera", "gpu"}))
    view = WorkerView("w", queues=("q",), labels=frozenset({"gpu", "camera", "x"}))
    assert routing.serves(view, "q/camera,gpu") and routing.serves(view, "q")
    assert not routing.serves(view, "q/lidar") and not routing.serves(view, "other/gpu")


@pytest.mark.parametrize("value", [["gpu"], [], ["a", "b", "c"], None, ["a.b:c-d_9"]])
def test_valid_requires_are_accepted_by_both_validators(value: Any) -> None:
    body = {"id": "t1", "task": "x", "requires": value}
    assert validate.task(dict(body))["requires"] == value
    assert Task.model_validate(body).requires == value


@pytest.mark.parametrize("value", ["gpu", ["a", "b", "c", "d"], ["gpu", "gpu"], ["a/b"], ["a,b"], [""], [1],
                                   ["x" * 65], {"gpu": True}])
def test_invalid_requires_are_refused_by_both_validators(value: Any) -> None:
    body = {"id": "t1", "task": "x", "requires": value}
    with pytest.raises(validate.Invalid, match="requires"):
        validate.task(dict(body))
    with pytest.raises(ValueError, match="requires"):
        Task.model_validate(body)


def test_a_worker_without_a_required_label_does_not_start_the_task() -> None:
    task = validate.task({"id": "t1", "task": "where", "requires": ["gpu", "camera"]})
    assert judge(task, None, {"where"}, own_labels={"gpu"}) == UNMATCHED
    assert judge(task, None, {"where"}, own_labels={"gpu", "camera", "x"}) is None
    assert judge(validate.task({"id": "t2", "task": "where"}), None, {"where"}) is None


def test_labels_and_requires_are_checked_where_they_are_given() -> None:
    assert requires_field(["gpu", "camera", "gpu"]) == {"requires": ["camera", "gpu"]}
    assert requires_field(None) == {}
    with pytest.raises(ConfigError, match="at most 3"):
        requires_field(["a", "b", "c", "d"])
    with pytest.raises(ConfigError, match="label 'a b'"):
        Worker(TaskApp(), labels=["a b"])


def test_the_fleet_serves_a_lane_only_with_workers_that_have_its_labels() -> None:
    from mqtt_tasks.coordinator.fleet import Fleet
    from tests.chaos_tasks import test_policy

    fleet = Fleet(test_policy(HB))
    for name, worker_labels, free in (("plain", (), 2), ("gpu", ("gpu",), 2), ("busy-cam", ("camera",), 0)):
        view = fleet.view(name)
        view.queues, view.labels, view.heartbeat_s, view.last_seen = ("q",), frozenset(worker_labels), HB, 100.0
        fleet.set_free(view, free)
    serving = fleet.serving(["q", "q/gpu", "q/camera", "q/lidar", "other"], now=100.0)
    assert sorted(serving) == ["q", "q/gpu"]  # camera: its only worker is full; lidar, other: nobody
    picked = serving["q/gpu"].pick(1)
    assert picked is not None and picked.worker == "gpu"
    plain_lane, seen = serving["q"], set()
    while (worker := plain_lane.pick(10)) is not None:  # every worker with a free slot serves the plain lane
        seen.add(worker.worker)
        worker.free = 0
        plain_lane.taken(worker)
    assert seen == {"plain", "gpu"}


def test_the_waiting_reason_names_the_labels_and_the_workers() -> None:
    record = TaskRecord("t1", state=BACKLOG, queue="q", body={"id": "t1", "task": "x", "requires": ["camera"]})
    plain = WorkerView("plain", queues=("q",))
    gpu = WorkerView("gpu", queues=("q",), labels=frozenset({"gpu"}))
    reason = routing.waiting_reason(record, [plain, gpu])
    assert reason is not None and "has the labels it requires (camera)" in reason
    assert "plain: no labels; gpu: gpu" in reason
    cam = WorkerView("cam", queues=("q",), labels=frozenset({"camera"}))
    assert routing.waiting_reason(record, [plain, cam]) == "waiting for a free slot on a worker with camera: cam"
    assert routing.waiting_reason(TaskRecord("t2", state=BACKLOG, queue="q", body={}), [plain]) is None


# -- real processes --------------------------------------------------------------------------------

@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    path = str(tmp_path / "ledger")
    monkeypatch.setenv("ROUTING_LEDGER", path)  # inherited by the worker processes
    return path


@contextmanager
def worker_process(url: str, prefix: str, worker_id: str, *worker_labels: str,
                   concurrency: int = 2) -> Iterator[Proc]:
    """``mqtt-worker tests.routing_tasks:app --label ...`` as a real process (this checkout's code)."""
    argv = [sys.executable, "-m", "mqtt_tasks", "worker", "tests.routing_tasks:app", "--broker", url,
            "--prefix", prefix, "--worker-id", worker_id, "--concurrency", str(concurrency), "--heartbeat",
            str(HB), "--grace", "2", "--log-level", "warning"]
    for label in worker_labels:
        argv += ["--label", label]
    proc = Proc(argv)
    try:
        line = proc.wait_line("ready")
        assert (f"labels {','.join(sorted(worker_labels))}" in line) == bool(worker_labels), line
        yield proc
    finally:
        code, stderr = proc.stop()
        assert code == 0, stderr


def in_process_worker(url: str, prefix: str, worker_id: str, *worker_labels: str) -> AbstractContextManager[Worker]:
    return registry_worker(url, prefix, worker_id, routing_tasks.app.registry, labels=worker_labels, heartbeat_s=HB,
                           concurrency=2)


def send(app: TaskApp, ident: str, *required: str, queue: str = "default") -> Any:
    from mqtt_tasks.app import TaskOptions

    return app.send("where", [ident], {}, options=TaskOptions(queue=queue), extra=requires_field(required) or None)


def test_a_mixed_fleet_runs_each_task_only_on_a_worker_with_its_labels(mosquitto: Any, prefix: str,
                                                                       ledger: str) -> None:
    fleet = {"plain": set(), "gpu": {"gpu"}, "gpucam": {"gpu", "camera"}}
    plan = {**{f"none-{i}": () for i in range(9)}, **{f"gpu-{i}": ("gpu",) for i in range(9)},
            **{f"both-{i}": ("camera", "gpu") for i in range(6)}, **{f"cam-{i}": ("camera",) for i in range(3)}}
    with coordinator(mosquitto.url, prefix), worker_process(mosquitto.url, prefix, "plain"), \
            worker_process(mosquitto.url, prefix, "gpu", "gpu"), \
            worker_process(mosquitto.url, prefix, "gpucam", "gpu", "camera"), \
            TaskApp(broker=mosquitto.url, prefix=prefix) as producer:
        handles = {ident: send(producer, ident, *required) for ident, required in plan.items()}
        results = {ident: h.result(TIMEOUT) for ident, h in handles.items()}
    runs = routing_tasks.ledger(ledger)
    assert set(runs) == set(plan)
    for ident, required in plan.items():
        assert all(set(required) <= fleet[w] for w in runs[ident]), (ident, runs[ident])
        assert results[ident] in runs[ident]
    assert {w for ws in runs.values() for w in ws} == set(fleet)  # every worker ran something
    assert {w for i, ws in runs.items() if i.startswith(("both", "cam")) for w in ws} == {"gpucam"}


def test_a_task_nobody_can_run_waits_says_why_and_runs_when_a_matching_worker_joins(
        mosquitto: Any, prefix: str, ledger: str) -> None:
    with coordinator(mosquitto.url, prefix), worker_process(mosquitto.url, prefix, "plain"), \
            worker_process(mosquitto.url, prefix, "gpu", "gpu"), \
            TaskApp(broker=mosquitto.url, prefix=prefix) as producer:
        waiting = send(producer, "lonely", "camera")
        status = wait_until(lambda: _waiting(mosquitto.url, prefix, waiting.id), TIMEOUT,
                            message="the task never said why it waits")
        assert "has the labels it requires (camera)" in status["waiting"], status
        assert "plain: no labels" in status["waiting"] and "gpu: gpu" in status["waiting"]
        # the CLI prints it too
        shown = subprocess.run([sys.executable, "-m", "mqtt_tasks", "status", waiting.id, "--broker", mosquitto.url,
                                "--prefix", prefix], cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert shown.returncode == 0 and "requires (camera)" in json.loads(shown.stdout)["waiting"]
        # it holds up nothing: the other tasks of its queue, routed or not, still run
        others = [send(producer, "meanwhile-0"), send(producer, "meanwhile-1", "gpu")]
        assert others[0].result(TIMEOUT) in ("plain", "gpu") and others[1].result(TIMEOUT) == "gpu"
        assert not waiting.done()
        with worker_process(mosquitto.url, prefix, "cam", "camera"):
            assert waiting.result(TIMEOUT) == "cam"
    assert routing_tasks.ledger(ledger)["lonely"] == ["cam"]
    assert routing_tasks.ledger(ledger)["meanwhile-1"] == ["gpu"]


def _waiting(url: str, prefix: str, task_id: str) -> dict[str, Any] | None:
    status = query_status(settings(url, prefix), task_id)
    return status if status.get("waiting") else None


def test_without_a_coordinator_routed_tasks_find_their_workers(broker_url: str, prefix: str, ledger: str) -> None:
    """A task on P/tasks/{queue} that a worker cannot run is forwarded to its routed topic; a client
    that knows the convention publishes there directly; a wrong routed topic is refused."""
    observer = PlainClient(broker_url, mqtt5=False)
    observer.subscribe(f"{prefix}/errors")
    try:
        with in_process_worker(broker_url, prefix, "plain"), in_process_worker(broker_url, prefix, "gpu", "gpu"), \
                TaskApp(broker=broker_url, prefix=prefix) as producer:
            handles = [send(producer, f"gpu-{i}", "gpu") for i in range(6)] + [send(producer, "free")]
            assert [h.result(TIMEOUT) for h in handles[:6]] == ["gpu"] * 6
            handles[6].result(TIMEOUT)
            reply = f"{prefix}/replies/plain-client"
            observer.subscribe(reply)
            observer.publish(f"{prefix}/routed/default/gpu",  # no requires: the topic's labels are its own
                             {"id": "direct-1", "task": "where", "args": ["direct"], "reply_to": reply})
            event = observer.until(lambda item: item[0] == reply)[-1][1]
            assert (event["state"], event["result"]) == ("succeeded", "gpu")
            wrong = send(producer, "wrong", "gpu", "camera")  # nobody has both: forwarded, nobody takes it
            observer.publish(f"{prefix}/routed/default/gpu",
                             {"id": "mislabelled", "task": "where", "args": ["x"], "requires": ["gpu", "lidar"]})
            report = observer.until(lambda item: item[0] == f"{prefix}/errors")[-1][1]
            assert report["id"] == "mislabelled" and "lacks lidar" in report["reason"]
            assert not wrong.done()
    finally:
        observer.close()
    runs = routing_tasks.ledger(ledger)
    assert all(runs[f"gpu-{i}"] == ["gpu"] for i in range(6)) and runs["direct"] == ["gpu"]
    assert "x" not in runs and "wrong" not in runs


def test_bad_requires_is_reported_and_the_next_task_runs(broker_url: str, prefix: str, ledger: str) -> None:
    observer = PlainClient(broker_url, mqtt5=False)
    observer.subscribe(f"{prefix}/errors")
    try:
        with in_process_worker(broker_url, prefix, "gpu", "gpu"), TaskApp(broker=broker_url, prefix=prefix) as app:
            observer.publish(f"{prefix}/tasks/default", {"id": "bad-1", "task": "where", "args": ["bad"],
                                                         "requires": "gpu"})
            report = observer.until(lambda item: item[0] == f"{prefix}/errors")[-1][1]
            assert report["id"] == "bad-1" and "requires" in report["reason"]
            assert send(app, "good", "gpu").result(TIMEOUT) == "gpu"
    finally:
        observer.close()
    assert "bad" not in routing_tasks.ledger(ledger)


def test_the_cli_refuses_bad_labels_in_one_line() -> None:
    result = CliRunner().invoke(worker_command, ["tests.routing_tasks:app", "--label", "a b"], prog_name="mqtt-worker")
    assert "invalid labels" in assert_one_line_error(result, 2)
    result = CliRunner().invoke(cli, ["submit", "where", "--require", "a", "--require", "b", "--require", "c",
                                      "--require", "d"])
    assert "at most 3" in assert_one_line_error(result, 2)


def test_a_failed_routed_task_says_so(broker_url: str, prefix: str, ledger: str) -> None:
    """Without a coordinator, a task on a routed topic whose labels the worker lacks ends failed."""
    with in_process_worker(broker_url, prefix, "gpu", "gpu"), TaskApp(broker=broker_url, prefix=prefix) as app:
        from mqtt_tasks.app import TaskOptions

        handle = app.send("where", ["mis"], {}, options=TaskOptions(), extra={"requires": ["gpu", "lidar"]})
        app.connection().publish(f"{prefix}/routed/default/gpu", json.dumps(
            {"id": handle.id, "task": "where", "args": ["mis"], "requires": ["gpu", "lidar"],
             "reply_to": app.reply_topic}).encode())
        with pytest.raises(TaskFailedError, match="LabelMismatchError"):
            handle.result(TIMEOUT)


def test_the_cli_submits_a_task_that_requires_labels(mosquitto: Any, prefix: str, ledger: str) -> None:
    with in_process_worker(mosquitto.url, prefix, "plain"), in_process_worker(mosquitto.url, prefix, "gpu", "gpu"):
        for i in range(3):
            result = CliRunner().invoke(cli, ["submit", "where", f"cli-{i}", "--require", "gpu", "--wait",
                                              "--broker", mosquitto.url, "--prefix", prefix])
            assert result.exit_code == 0, result.output
            assert json.loads(result.stdout) == "gpu"
    assert all(routing_tasks.ledger(ledger)[f"cli-{i}"] == ["gpu"] for i in range(3))
