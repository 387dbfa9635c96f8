"""Rolling out task code with real processes (docs/deploy.md): ``mqtt-worker --accept-deploys``
processes, a real Mosquitto, a coordinator. Which version ran a task is read from the ledger the
task bodies write (tests/deploy_tasks.py); what each worker did with a bundle, from its own
reports on ``P/deploy/status/{worker}`` and ``P/errors``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mqtt_tasks import TaskApp, Worker
from mqtt_tasks.cli import cli, fetch_worker_states, worker_command
from mqtt_tasks.coordinator import query_stats
from mqtt_tasks.deploy import bundle as bundles
from mqtt_tasks.deploy import client, keys
from mqtt_tasks.transport import Connection, Message
from tests import deploy_tasks
from tests.brokers import wait_until
from tests.coord_helpers import HB, coordinator, registry_worker, settings, spawn_coordinator
from tests.test_cli import Proc, assert_one_line_error

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 20.0
MODULE = "which_tasks"


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    path = str(tmp_path / "ledger")
    monkeypatch.setenv("DEPLOY_LEDGER", path)  # inherited by the worker processes
    return path


@pytest.fixture
def key(tmp_path: Path) -> tuple[str, str]:
    """(private key file, public key file) of the deployer."""
    private, public = str(tmp_path / "deployer.key"), str(tmp_path / "deployer.pub")
    keys.keygen(private, public)
    return private, public


def module_file(tmp_path: Path, version: str) -> str:
    path = tmp_path / f"v{version}" / f"{MODULE}.py"
    path.parent.mkdir(exist_ok=True)
    path.write_text(deploy_tasks.BUNDLE.format(version=version))
    return str(path)


@contextmanager
def worker_process(url: str, prefix: str, worker_id: str, public_key: str, tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch, env: dict[str, str] | None = None,
                   labels: tuple[str, ...] = ()) -> Iterator[Proc]:
    """``mqtt-worker tests.deploy_tasks:app --accept-deploys ...`` as a real process (this checkout's code)."""
    argv = [sys.executable, "-m", "mqtt_tasks", "worker", "tests.deploy_tasks:app", "--broker", url,
            "--prefix", prefix, "--worker-id", worker_id, "--concurrency", "2", "--heartbeat", str(HB),
            "--grace", "2", "--log-level", "warning", "--accept-deploys", "--deploy-key", public_key,
            "--deploy-dir", str(tmp_path / f"deploy-{worker_id}")]
    for label in labels:
        argv += ["--label", label]
    with monkeypatch.context() as patch:
        for name, value in (env or {}).items():
            patch.setenv(name, value)
        proc = Proc(argv)
    try:
        proc.wait_line("ready")
        yield proc
    finally:
        if proc.popen.poll() is None:
            code, stderr = proc.stop()
            assert code == 0, stderr


class Watch:
    """Every message on the deploy reports and the errors topic, as JSON, in arrival order."""

    def __init__(self, url: str, prefix: str) -> None:
        self.prefix = prefix
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self.conn = Connection(settings(url, prefix), f"watch-{uuid.uuid4().hex[:8]}", on_message=self._on)
        self.conn.subscribe(f"{prefix}/deploy/status/+")
        self.conn.subscribe(f"{prefix}/errors")
        self.conn.connect()

    def _on(self, message: Message) -> None:
        with self._lock:
            self.messages.append((message.topic, json.loads(message.payload)))

    def reports(self, worker: str) -> list[dict[str, Any]]:
        with self._lock:
            return [m for t, m in self.messages if t == f"{self.prefix}/deploy/status/{worker}"]

    def states(self, worker: str) -> list[str]:
        return [r["state"] for r in self.reports(worker)]

    def errors(self) -> list[dict[str, Any]]:
        with self._lock:
            return [m for t, m in self.messages if t == f"{self.prefix}/errors"]

    def close(self) -> None:
        self.conn.close()


@contextmanager
def watching(url: str, prefix: str) -> Iterator[Watch]:
    watch = Watch(url, prefix)
    try:
        yield watch
    finally:
        watch.close()


def wait_fleet(url: str, prefix: str, workers: set[str]) -> None:
    def seen() -> bool:
        known = query_stats(settings(url, prefix))["workers"]
        return all(known.get(w, {}).get("state") == "online" for w in workers)
    wait_until(seen, TIMEOUT, interval=0.1, message=f"the coordinator never saw {workers}")


def wait_rollout(url: str, prefix: str, rollout_id: str, *states: str) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        found: dict[str, Any] = client.rollout_status(settings(url, prefix), rollout_id)
        return found if found["state"] in states else None
    return wait_until(reached, TIMEOUT, interval=0.1, message=f"rollout {rollout_id} never reached {states}")


def wait_applied(url: str, prefix: str, rollout_id: str, worker: str) -> None:
    wait_until(lambda: client.rollout_status(settings(url, prefix), rollout_id)["workers"][worker]["state"]
               == "applied", TIMEOUT, interval=0.05, message=f"{worker} never applied {rollout_id}")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mqtt_tasks", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def rollout_id_of(output: str) -> str:
    assert output.startswith("rollout "), output
    return output.split()[1].rstrip(":")


# -- five workers, one failing, the abort threshold ---------------------------------------------------

def test_a_rollout_across_five_workers_aborts_at_the_threshold_and_the_rest_never_get_it(
        mosquitto: Any, prefix: str, tmp_path: Path, key: tuple[str, str], ledger: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    url = mosquitto.url
    names = [f"w{i}" for i in range(1, 6)]
    with coordinator(url, prefix), watching(url, prefix) as watch, ExitStack() as stack:
        for name in names:  # w2 lacks what v2 needs: its import fails there
            stack.enter_context(worker_process(url, prefix, name, key[1], tmp_path, monkeypatch,
                                               env={"DEPLOY_BREAK": "2"} if name == "w2" else None))
        wait_fleet(url, prefix, set(names))
        started = run_cli("deploy", module_file(tmp_path, "2"), "--version", "2", "--to", "all", "--key", key[0],
                          "--wave-size", "2", "--abort-after-failures", "50", "--min-executed", "2",
                          "--broker", url, "--prefix", prefix)
        assert started.returncode == 0, started.stderr
        rollout_id = rollout_id_of(started.stdout)
        final = wait_rollout(url, prefix, rollout_id, "aborted", "completed")
        assert final["state"] == "aborted", final
        assert "1 of 2 finished worker(s) failed" in final["reason"]
        steps = final["workers"]
        assert steps["w1"]["state"] == "applied"
        assert steps["w2"]["state"] == "failed" and "no camera driver" in steps["w2"]["reason"]
        assert [steps[w]["state"] for w in ("w3", "w4", "w5")] == ["pending"] * 3
        assert final["waves"] == 1 and final["counts"]["pending"] == 3
        # the workers' own word: w1 and w2 went through the steps, the others never heard of it
        assert watch.states("w1") == ["downloaded", "verified", "applied"]
        assert watch.states("w2") == ["downloaded", "verified", "failed"]
        assert watch.reports("w1")[-1]["running"] == {MODULE: "2"} and watch.reports("w2")[-1]["running"] == {}
        assert not any(watch.reports(w) for w in ("w3", "w4", "w5"))
        shown = run_cli("deploy", "status", rollout_id, "--broker", url, "--prefix", prefix)
        assert shown.returncode == 0 and "aborted" in shown.stdout and "no camera driver" in shown.stdout
        listed = run_cli("deploy", "status", "--json", "--broker", url, "--prefix", prefix)
        assert [r["id"] for r in json.loads(listed.stdout)] == [rollout_id]
        # and the tasks say which code runs where: w1 the new, the others the old (the ledger below)
        with TaskApp(broker=url, prefix=prefix) as producer:
            results = {producer.send("which", [f"t{i}"]).result(TIMEOUT) for i in range(10)}
        assert results == {"2", "local"}
    versions = {(w, v) for kind, _, w, v in deploy_tasks.ledger(ledger) if kind == "end"}
    assert {v for w, v in versions if w == "w1"} == {"2"}
    assert {v for w, v in versions if w != "w1"} <= {"local"}


# -- refused bundles -----------------------------------------------------------------------------------

def test_bad_bundles_are_refused_reported_and_change_nothing(mosquitto: Any, prefix: str, tmp_path: Path,
                                                               key: tuple[str, str], ledger: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    url = mosquitto.url
    other = (str(tmp_path / "other.key"), str(tmp_path / "other.pub"))
    keys.keygen(*other)
    s = settings(url, prefix)
    with coordinator(url, prefix), watching(url, prefix) as watch, \
            worker_process(url, prefix, "w1", key[1], tmp_path, monkeypatch), \
            TaskApp(broker=url, prefix=prefix) as producer:
        wait_fleet(url, prefix, {"w1"})
        # signed with a key this worker does not trust; its top level would leave a mark if it ran
        marker = tmp_path / "the-code-ran"
        wrong_file = Path(module_file(tmp_path, "2"))
        wrong_file.write_text(wrong_file.read_text() + f"\nopen({str(marker)!r}, 'w').close()\n")
        wrong = client.start_rollout(s, client.sign_module(str(wrong_file), version="2", to="all",
                                                           private_key_path=other[0]))
        final = wait_rollout(url, prefix, wrong["id"], "completed")
        assert final["workers"]["w1"]["state"] == "failed" and "does not verify" in final["workers"]["w1"]["reason"]
        assert producer.send("which", ["after-wrong-key"]).result(TIMEOUT) == "local"
        # the right key: applied
        good = client.sign_module(module_file(tmp_path, "3"), version="3", to="all", private_key_path=key[0])
        wait_rollout(url, prefix, client.start_rollout(s, good)["id"], "completed")
        assert producer.send("which", ["after-good"]).result(TIMEOUT) == "3"
        # straight onto the worker's topic, as a compromised broker or coordinator could
        private = keys.load_private(key[0])
        older = bundles.make(deploy_tasks.BUNDLE.format(version="1"), module=MODULE, version="1", to="all",
                             rollout="old-one", private_key=private, serial=good["manifest"]["serial"] - 1)
        tampered = {**good, "source": good["source"] + f"\nopen({str(marker)!r}, 'w').close()\n"}
        elsewhere = bundles.make(deploy_tasks.BUNDLE.format(version="4"), module=MODULE, version="4",
                                 to="worker=w9", rollout="not-w1", private_key=private)
        unsigned = {**good, "sig": "A" * 86 + "=="}
        bad = [json.dumps(b).encode() for b in (older, tampered, elsewhere, unsigned)] + [b"not json"]
        for payload in bad:
            watch.conn.publish(f"{prefix}/deploy/bundle/w1", payload)
        wait_until(lambda: len(watch.errors()) >= 6, TIMEOUT, message=f"errors so far: {watch.errors()}")
        reasons = [e["reason"] for e in watch.errors()]
        assert all(e["component"] == "worker" and e["source"] == "w1" for e in watch.errors())
        assert "does not verify" in reasons[0]
        assert "replay or downgrade" in reasons[1]
        assert "does not match the signed SHA-256" in reasons[2]
        assert "does not select worker w1" in reasons[3]
        assert "does not verify" in reasons[4]
        assert "malformed bundle" in reasons[5]
        assert producer.send("which", ["after-bad"]).result(TIMEOUT) == "3"  # nothing changed, nothing lost
        assert not marker.exists()  # code that did not verify never ran
        # signed, but named like a module of the standard library: it would replace it; not applied
        manifest = {**good["manifest"], "module": "json", "serial": good["manifest"]["serial"] + 1}
        shadow = {**good, "manifest": manifest, "sig": keys.sign(private, bundles.canonical(manifest))}
        watch.conn.publish(f"{prefix}/deploy/bundle/w1", json.dumps(shadow).encode())
        taken = wait_until(lambda: [r for r in watch.reports("w1") if "taken" in r.get("reason", "")], TIMEOUT)
        assert taken[0]["state"] == "failed" and taken[0]["module"] == "json"
        assert producer.send("which", ["after-shadow"]).result(TIMEOUT) == "3"
        # the bundle it runs, again (a QoS 1 redelivery): answered, not applied again (no `verified` step)
        before = len(watch.reports("w1"))
        watch.conn.publish(f"{prefix}/deploy/bundle/w1", json.dumps(good).encode())
        wait_until(lambda: len(watch.reports("w1")) >= before + 2, TIMEOUT)
        assert [r["state"] for r in watch.reports("w1")[before:]] == ["downloaded", "applied"]
        assert watch.reports("w1")[-1]["running"] == {MODULE: "3"}


# -- the swap between tasks, a restart, a rollback ------------------------------------------------------

def test_a_running_task_finishes_on_the_old_code_the_next_runs_the_new_a_restart_keeps_it_and_rollback(
        mosquitto: Any, prefix: str, tmp_path: Path, key: tuple[str, str], ledger: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    url = mosquitto.url
    s = settings(url, prefix)
    gate = str(tmp_path / "gate")
    with coordinator(url, prefix), watching(url, prefix) as watch, TaskApp(broker=url, prefix=prefix) as producer:
        with worker_process(url, prefix, "w1", key[1], tmp_path, monkeypatch) as proc:
            wait_fleet(url, prefix, {"w1"})
            first = client.start_rollout(s, client.sign_module(module_file(tmp_path, "1"), version="1", to="all",
                                                               private_key_path=key[0]))
            wait_rollout(url, prefix, first["id"], "completed")
            slow = producer.send("which", ["slow"], {"gate": gate})
            wait_until(lambda: ("begin", "slow", "w1", "1") in deploy_tasks.ledger(ledger), TIMEOUT)
            second = client.start_rollout(s, client.sign_module(module_file(tmp_path, "2"), version="2", to="all",
                                                                private_key_path=key[0]))
            wait_rollout(url, prefix, second["id"], "completed")
            assert producer.send("which", ["fast"]).result(TIMEOUT) == "2"  # while `slow` still runs
            assert not slow.done()
            Path(gate).touch()
            assert slow.result(TIMEOUT) == "1"
            proc.popen.send_signal(signal.SIGKILL)
            proc.popen.wait(10)
        runs = deploy_tasks.ledger(ledger)
        assert runs.index(("begin", "slow", "w1", "1")) < runs.index(("end", "fast", "w1", "2")) \
            < runs.index(("end", "slow", "w1", "1"))
        # a worker killed and started again runs what it applied, and says so before any task
        with worker_process(url, prefix, "w1", key[1], tmp_path, monkeypatch):
            restored = wait_until(lambda: [r for r in watch.reports("w1") if r.get("restored")], TIMEOUT)
            assert restored[0]["version"] == "2" and restored[0]["running"] == {MODULE: "2"}
            wait_until(lambda: any(w.worker == "w1" and w.state == "online" and w.code == {MODULE: "2"}
                                   for w in fetch_worker_states(s)), TIMEOUT, message="no heartbeat says code 2")
            assert producer.send("which", ["restarted"]).result(TIMEOUT) == "2"
            # the serial it runs survived the restart: the older bundle replayed is refused
            older = client.rollout_status(s, first["id"], bundle=True)["bundle"]
            watch.conn.publish(f"{prefix}/deploy/bundle/w1", json.dumps(older).encode())
            refused = wait_until(lambda: [e for e in watch.errors() if "replay or downgrade" in e["reason"]], TIMEOUT)
            assert refused[0]["source"] == "w1"
            assert producer.send("which", ["after-replay"]).result(TIMEOUT) == "2"
            wait_fleet(url, prefix, {"w1"})
            rolled = run_cli("deploy", "rollback", second["id"], "--key", key[0], "--broker", url, "--prefix", prefix)
            assert rolled.returncode == 0, rolled.stderr
            back = rollout_id_of(rolled.stdout)
            final = wait_rollout(url, prefix, back, "completed")
            assert final["version"] == "1" and final["rollback_of"] == second["id"]
            assert {w: step["state"] for w, step in final["workers"].items()} == {"w1": "applied"}
            assert client.rollout_status(s, second["id"])["rolled_back_by"] == back
            assert producer.send("which", ["rolled-back"]).result(TIMEOUT) == "1"


# -- pause, resume, and a coordinator killed in between ---------------------------------------------------

def in_process_worker(url: str, prefix: str, worker_id: str, public_key: str,
                      tmp_path: Path) -> AbstractContextManager[Worker]:
    return registry_worker(url, prefix, worker_id, deploy_tasks.app.registry, heartbeat_s=HB, concurrency=1,
                           deploy=(public_key, str(tmp_path / f"deploy-{worker_id}")))


def test_pause_holds_the_waves_across_a_coordinator_kill_and_resume_finishes(
        mosquitto: Any, prefix: str, tmp_path: Path, key: tuple[str, str]) -> None:
    url, db = mosquitto.url, str(tmp_path / "coordinator.db")
    s = settings(url, prefix)
    names = ["a", "b", "c"]
    coord = spawn_coordinator(url, prefix, db)
    try:
        with ExitStack() as stack:
            workers = [stack.enter_context(in_process_worker(url, prefix, n, key[1], tmp_path)) for n in names]
            wait_fleet(url, prefix, set(names))
            signed = client.sign_module(module_file(tmp_path, "2"), version="2", to="all",
                                        private_key_path=key[0])
            started = client.start_rollout(s, signed, wave_size=1, rate=30.0)  # a wave every 2 s
            paused = client.pause_rollout(s, started["id"])
            assert paused["state"] == "paused" and paused["waves"] == 1
            wait_applied(url, prefix, started["id"], "a")
            coord = killed_and_restarted(coord, url, prefix, db)
            again = client.rollout_status(s, started["id"])
            assert again["state"] == "paused" and again["workers"]["a"]["state"] == "applied"
            assert [again["workers"][n]["state"] for n in ("b", "c")] == ["pending", "pending"]
            client.resume_rollout(s, started["id"])
            final = wait_rollout(url, prefix, started["id"], "completed")
            assert final["counts"]["applied"] == 3 and final["waves"] == 3
            assert all(w._deploys is not None and w._deploys.versions() == {MODULE: "2"} for w in workers)
    finally:
        coord.send_signal(signal.SIGTERM)
        coord.wait(10)


# -- bad input at the command line: one line, no traceback -------------------------------------------------

def test_the_cli_refuses_bad_deploy_input_in_one_line(tmp_path: Path, key: tuple[str, str]) -> None:
    module = module_file(tmp_path, "2")
    runner = CliRunner()
    cases = [
        (["deploy", str(tmp_path / "missing.py"), "--version", "2", "--key", key[0]], 2),
        (["deploy", module, "--version", "2", "--to", "everyone", "--key", key[0]], 2),
        (["deploy", module, "--version", "two words", "--key", key[0]], 2),
        (["deploy", module, "--version", "2", "--key", key[1]], 2),  # the public half cannot sign
        (["deploy", "keygen", str(tmp_path / "deployer")], 2),  # exists already: never overwritten
    ]
    for argv, code in cases:
        assert_one_line_error(runner.invoke(cli, argv, prog_name="mqtt-tasks"), code)
    bad_key = tmp_path / "bad.pub"
    bad_key.write_text("not a key")
    for argv in (["--accept-deploys"], ["--deploy-key", key[1]], ["--accept-deploys", "--deploy-key", str(bad_key),
                                                                  "--deploy-dir", str(tmp_path / "d")]):
        result = runner.invoke(worker_command, ["tests.deploy_tasks:app", *argv], prog_name="mqtt-worker")
        assert_one_line_error(result, 2)
    made = runner.invoke(cli, ["deploy", "keygen", str(tmp_path / "fresh")], prog_name="mqtt-tasks")
    assert made.exit_code == 0 and os.path.exists(tmp_path / "fresh.key")


# -- keys rotated, deploys off ---------------------------------------------------------------------------

def test_a_worker_restarted_with_another_key_refuses_its_kept_bundles_and_one_without_deploys_ignores_them(
        mosquitto: Any, prefix: str, tmp_path: Path, key: tuple[str, str]) -> None:
    url = mosquitto.url
    other = (str(tmp_path / "other.key"), str(tmp_path / "other.pub"))
    keys.keygen(*other)
    signed = bundles.make(deploy_tasks.BUNDLE.format(version="5"), module=MODULE, version="5", to="all",
                          rollout="direct", private_key=keys.load_private(key[0]))
    with watching(url, prefix) as watch, TaskApp(broker=url, prefix=prefix) as producer:
        with in_process_worker(url, prefix, "w1", key[1], tmp_path):  # no coordinator needed to take a bundle
            watch.conn.publish(f"{prefix}/deploy/bundle/w1", json.dumps(signed).encode())
            wait_until(lambda: watch.states("w1")[-1:] == ["applied"], TIMEOUT)
            assert producer.send("which", ["before-rotation"]).result(TIMEOUT) == "5"
        with in_process_worker(url, prefix, "w1", other[1], tmp_path):  # the same directory, the new key
            refused = wait_until(lambda: [r for r in watch.reports("w1") if r["state"] == "failed"], TIMEOUT)
            assert "does not verify" in refused[0]["reason"] and refused[0]["running"] == {}
            assert producer.send("which", ["after-rotation"]).result(TIMEOUT) == "local"
        plain_app = TaskApp(broker=url, prefix=prefix)
        plain_app.registry.update(deploy_tasks.app.registry)
        with Worker(plain_app, worker_id="w3", heartbeat_s=HB, concurrency=1):  # no --accept-deploys
            watch.conn.publish(f"{prefix}/deploy/bundle/w3", json.dumps(signed).encode())
            assert producer.send("which", ["no-deploys"]).result(TIMEOUT) == "local"
            assert producer.send("which", ["no-deploys-2"]).result(TIMEOUT) == "local"
        plain_app.close()
    assert watch.reports("w3") == []


# -- workers heard after the start: continuous rollouts (the default) ---------------------------------------

def cam(worker: str) -> tuple[str, ...]:
    """The labels of a camera worker: ``cam``, and one of its own so a task can be routed to it alone."""
    return "cam", f"at-{worker}"


def run_on(producer: TaskApp, worker: str, ident: str) -> Any:
    """The version of ``which`` that ``worker`` runs, by what the task returns (routed to it by its label)."""
    return producer.send("which", [ident], extra={"requires": [f"at-{worker}"]}).result(TIMEOUT)


def killed_and_restarted(coord: subprocess.Popen[str], url: str, prefix: str, db: str) -> subprocess.Popen[str]:
    """``kill -9`` the coordinator process; a new one on the same store."""
    coord.send_signal(signal.SIGKILL)
    coord.wait(10)
    return spawn_coordinator(url, prefix, db)


def wait_offline(url: str, prefix: str, worker: str) -> None:
    wait_until(lambda: query_stats(settings(url, prefix))["workers"].get(worker, {}).get("state") == "offline",
               TIMEOUT, interval=0.1, message=f"the coordinator never saw {worker} go offline")


def test_workers_that_join_or_come_back_after_a_rollout_get_it_also_after_a_coordinator_kill(
        mosquitto: Any, prefix: str, tmp_path: Path, key: tuple[str, str], ledger: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    url, db = mosquitto.url, str(tmp_path / "coordinator.db")
    coord = spawn_coordinator(url, prefix, db)

    def worker(name: str) -> Any:
        return worker_process(url, prefix, name, key[1], tmp_path, monkeypatch, labels=cam(name))
    try:
        with watching(url, prefix) as watch, TaskApp(broker=url, prefix=prefix) as producer, ExitStack() as stack:
            with worker("w0"):  # a device that is down when the rollout starts (its process stopped)
                wait_fleet(url, prefix, {"w0"})
            wait_offline(url, prefix, "w0")
            for name in ("w1", "w2"):
                stack.enter_context(worker(name))
            wait_fleet(url, prefix, {"w1", "w2"})
            started = CliRunner().invoke(cli, ["deploy", module_file(tmp_path, "2"), "--version", "2", "--to",
                                               "label=cam", "--key", key[0], "--wave-size", "2", "--broker", url,
                                               "--prefix", prefix], prog_name="mqtt-tasks")
            assert started.exit_code == 0, started.output
            assert "to 2 worker(s) (w1, w2); workers that match later get it when heard" in started.stdout
            rollout_id = rollout_id_of(started.stdout)
            assert set(wait_rollout(url, prefix, rollout_id, "completed")["workers"]) == {"w1", "w2"}
            # a new device with the label, after the rollout completed
            stack.enter_context(worker("w3"))
            wait_applied(url, prefix, rollout_id, "w3")
            assert run_on(producer, "w3", "new-device") == "2"
            # the coordinator killed: the rollout is in its store, and a worker back afterwards gets it too
            coord = killed_and_restarted(coord, url, prefix, db)
            stack.enter_context(worker("w0"))
            wait_applied(url, prefix, rollout_id, "w0")
            assert run_on(producer, "w0", "came-back") == "2"
            final = wait_rollout(url, prefix, rollout_id, "completed")
            assert list(final["workers"]) == ["w1", "w2", "w3", "w0"]  # the joiners in the order heard
            assert final["counts"]["applied"] == 4 and final["waves"] == 3 and final["snapshot"] is False
            assert watch.states("w0")[-3:] == ["downloaded", "verified", "applied"]
            assert watch.reports("w0")[-1]["rollout"] == rollout_id
            assert run_on(producer, "w1", "target") == "2"
    finally:
        coord.send_signal(signal.SIGTERM)
        coord.wait(10)
    ran = {(w, v) for kind, ident, w, v in deploy_tasks.ledger(ledger) if kind == "end"}
    assert {("w3", "2"), ("w0", "2"), ("w1", "2")} <= ran and not {v for _, v in ran} - {"2"}


def test_snapshot_aborted_and_rolled_back_rollouts_are_not_sent_to_joiners_the_rollback_is(
        mosquitto: Any, prefix: str, tmp_path: Path, key: tuple[str, str], ledger: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    url = mosquitto.url
    s = settings(url, prefix)

    def worker(name: str, env: dict[str, str] | None = None) -> Any:
        return worker_process(url, prefix, name, key[1], tmp_path, monkeypatch, env=env, labels=cam(name))

    def joins(name: str, *rollout_ids: str) -> None:
        """``name`` starts after these rollouts; none takes it, and it runs the code it started with."""
        stack.enter_context(worker(name))
        wait_fleet(url, prefix, {name})  # its first live heartbeat was handled: a join is decided there
        for rollout_id in rollout_ids:
            assert name not in client.rollout_status(s, rollout_id)["workers"]
        assert run_on(producer, name, f"joined-{name}") == "local"
        assert watch.reports(name) == []
    with coordinator(url, prefix), watching(url, prefix) as watch, \
            TaskApp(broker=url, prefix=prefix) as producer, ExitStack() as stack:
        stack.enter_context(worker("w1", env={"DEPLOY_BREAK": "3,4"}))  # v3 and v4 fail to load on w1
        wait_fleet(url, prefix, {"w1"})
        started = CliRunner().invoke(cli, ["deploy", module_file(tmp_path, "2"), "--version", "2", "--to",
                                           "label=cam", "--snapshot", "--key", key[0], "--broker", url, "--prefix",
                                           prefix], prog_name="mqtt-tasks")
        assert started.exit_code == 0, started.output
        assert "get it when heard" not in started.stdout
        snapshot = rollout_id_of(started.stdout)
        assert wait_rollout(url, prefix, snapshot, "completed")["snapshot"] is True
        joins("w2", snapshot)
        # aborted: w1 fails v3 first (waves of 1, sorted), and the rollout stops at the threshold
        aborted = client.start_rollout(s, client.sign_module(module_file(tmp_path, "3"), version="3",
                                                             to="label=cam", private_key_path=key[0]),
                                       abort_pct=50.0, min_executed=1)
        assert wait_rollout(url, prefix, aborted["id"], "aborted")["workers"]["w2"]["state"] == "pending"
        joins("w3", aborted["id"])
        # rolled back: v4 reaches w2 and w3 (w1 fails it and stays on v2); the rollback makes v2 the
        # module's current version for label=cam: sent to w2 and w3, not to w1 (its heartbeat says 2)
        v4 = client.start_rollout(s, client.sign_module(module_file(tmp_path, "4"), version="4", to="label=cam",
                                                        private_key_path=key[0]), wave_size=3)
        assert wait_rollout(url, prefix, v4["id"], "completed")["counts"]["applied"] == 2
        rolled = CliRunner().invoke(cli, ["deploy", "rollback", v4["id"], "--key", key[0], "--wave-size", "3",
                                          "--broker", url, "--prefix", prefix], prog_name="mqtt-tasks")
        assert rolled.exit_code == 0, rolled.output
        assert f"back to label=cam (rolls back {v4['id']}): sent to 2 worker(s) (w2, w3), 1 on it already (w1)" \
            in rolled.stdout
        back = rollout_id_of(rolled.stdout)
        final = wait_rollout(url, prefix, back, "completed")
        assert final["counts"]["applied"] == 3 and final["to"] == "label=cam" and final["rollback_of"] == v4["id"]
        assert "already running 2" in final["workers"]["w1"]["reason"]
        assert not [r for r in watch.reports("w1") if r.get("rollout") == back]  # never sent to w1
        assert run_on(producer, "w3", "rolled-back") == "2"
        # a new device with the label, after the rollback: it gets the rolled-back-to version, not v4
        stack.enter_context(worker("w4"))
        wait_applied(url, prefix, back, "w4")
        assert "w4" not in client.rollout_status(s, v4["id"])["workers"]
        assert run_on(producer, "w4", "joined-after-rollback") == "2"
        assert [r["version"] for r in watch.reports("w4") if r["state"] == "applied"] == ["2"]
    ran = {(w, v) for kind, _, w, v in deploy_tasks.ledger(ledger) if kind == "end"}
    assert {("w2", "local"), ("w3", "local"), ("w3", "2"), ("w4", "2")} <= ran
    assert not {v for w, v in ran if w == "w4"} - {"2"}


def test_a_continuous_rollout_with_no_live_match_waits_and_the_first_match_gets_it(
        mosquitto: Any, prefix: str, tmp_path: Path, key: tuple[str, str], ledger: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    url = mosquitto.url
    runner, where = CliRunner(), ["--broker", url, "--prefix", prefix]
    with coordinator(url, prefix), TaskApp(broker=url, prefix=prefix) as producer:
        deploy = ["deploy", module_file(tmp_path, "2"), "--version", "2", "--to", "worker=w1,w2", "--key", key[0]]
        refused = runner.invoke(cli, [*deploy, "--snapshot", *where], prog_name="mqtt-tasks")
        assert "no live worker matches worker=w1,w2" in assert_one_line_error(refused, 1)
        started = runner.invoke(cli, [*deploy, *where], prog_name="mqtt-tasks")
        assert started.exit_code == 0, started.output
        assert "to 0 worker(s) (none live matches worker=w1,w2 yet), 2 named but not live (w1, w2)" in started.stdout
        assert started.stdout.rstrip().endswith("waiting")
        rollout_id = rollout_id_of(started.stdout)
        shown = runner.invoke(cli, ["deploy", "status", rollout_id, *where], prog_name="mqtt-tasks")
        assert ": waiting;" in shown.stdout and "2 waiting" in shown.stdout
        with worker_process(url, prefix, "w2", key[1], tmp_path, monkeypatch, labels=cam("w2")):
            wait_applied(url, prefix, rollout_id, "w2")
            final = wait_rollout(url, prefix, rollout_id, "completed")
            assert final["workers"]["w1"] == {"state": "waiting", "attempts": 0} and final["counts"]["waiting"] == 1
            assert run_on(producer, "w2", "first-match") == "2"
    assert ("end", "first-match", "w2", "2") in deploy_tasks.ledger(ledger)


# -- a target offline when its wave went out: sent again when it comes back ---------------------------------

def test_a_target_stopped_before_its_wave_times_out_and_gets_it_when_back_also_after_a_coordinator_kill(
        mosquitto: Any, prefix: str, tmp_path: Path, key: tuple[str, str], ledger: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    url, db = mosquitto.url, str(tmp_path / "coordinator.db")
    s, where = settings(url, prefix), ["--broker", url, "--prefix", prefix]
    coord = spawn_coordinator(url, prefix, db)

    def worker(name: str) -> Any:
        return worker_process(url, prefix, name, key[1], tmp_path, monkeypatch, labels=cam(name))
    try:
        with watching(url, prefix) as watch, TaskApp(broker=url, prefix=prefix) as producer, ExitStack() as stack:
            stack.enter_context(worker("w1"))
            with worker("w2"):
                wait_fleet(url, prefix, {"w1", "w2"})
                started = CliRunner().invoke(cli, ["deploy", module_file(tmp_path, "2"), "--version", "2", "--to",
                                                   "label=cam", "--snapshot", "--rate", "20", "--worker-timeout",
                                                   "4", "--retries", "2", "--key", key[0], *where],
                                             prog_name="mqtt-tasks")
                assert started.exit_code == 0, started.output
                assert "to 2 worker(s) (w1, w2)" in started.stdout
                rollout_id = rollout_id_of(started.stdout)
                # a wave every 3 s: w1's is out, w2's is held (a snapshot: retries are not joiners)
                assert client.pause_rollout(s, rollout_id)["waves"] == 1
            wait_offline(url, prefix, "w2")  # its process stopped after the start, before its wave
            wait_applied(url, prefix, rollout_id, "w1")
            client.resume_rollout(s, rollout_id)
            # w2's send times out without a word from it: not failed, waiting to be sent again
            final = wait_rollout(url, prefix, rollout_id, "completed")
            assert final["workers"]["w2"]["state"] == "waiting" and final["workers"]["w2"]["attempts"] == 1
            assert "sent again when heard" in final["workers"]["w2"]["reason"]
            assert final["counts"]["failed"] == 0 and final["waves"] == 2
            assert watch.reports("w2") == []  # it never had the bundle
            # the coordinator killed: the retry is in its store; w2 comes back and gets it
            coord = killed_and_restarted(coord, url, prefix, db)
            stack.enter_context(worker("w2"))
            wait_applied(url, prefix, rollout_id, "w2")
            assert run_on(producer, "w2", "came-back") == "2"
            final = wait_rollout(url, prefix, rollout_id, "completed")
            assert final["counts"] == {"workers": 2, "waiting": 0, "pending": 0, "in_flight": 0, "applied": 2,
                                       "failed": 0}
            assert [final["workers"][w]["attempts"] for w in ("w1", "w2")] == [1, 2] and final["waves"] == 3
            assert watch.states("w2") == ["downloaded", "verified", "applied"]
            shown = CliRunner().invoke(cli, ["deploy", "status", rollout_id, *where], prog_name="mqtt-tasks")
            assert shown.exit_code == 0 and "sends" in shown.stdout
            assert any(line.split()[:3] == ["w2", "applied", "2"] for line in shown.stdout.splitlines()), shown.stdout
    finally:
        coord.send_signal(signal.SIGTERM)
        coord.wait(10)
    assert ("end", "came-back", "w2", "2") in deploy_tasks.ledger(ledger)
