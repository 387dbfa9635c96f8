"""The examples run as their READMEs say, against a real Mosquitto and a real `mqtt-worker`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.brokers import MosquittoProcess, wait_until

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def example_worker(mosquitto: MosquittoProcess) -> Iterator[dict[str, str]]:
    """`mqtt-worker examples.tasks:app` from the repository root, as examples/README.md says."""
    env = {**os.environ, "MQTT_TASKS_BROKER": mosquitto.url}
    proc = subprocess.Popen([sys.executable, "-m", "mqtt_tasks", "worker", "examples.tasks:app", "--log-level",
                             "warning"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert "ready" in ready, ready
        yield env
    finally:
        proc.terminate()
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()


def test_producer_prints_what_the_readme_says(example_worker: dict[str, str]) -> None:
    out = subprocess.run([sys.executable, "examples/producer.py"], cwd=ROOT, env=example_worker,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    readme = (ROOT / "examples" / "README.md").read_text()
    for line in out.stdout.splitlines():
        assert line in readme, f"{line!r} is not in examples/README.md"
    assert "add: [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]" in out.stdout
    assert "divide: failed remotely with ZeroDivisionError" in out.stdout


@pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto-clients not installed")
def test_shell_submit_script(example_worker: dict[str, str], mosquitto: MosquittoProcess) -> None:
    # WAIT is the script's own default: it must return at the final event, not when WAIT runs out.
    env = {**example_worker, "MQTT_PORT": str(mosquitto.port)}
    started = time.monotonic()
    out = subprocess.run(["sh", "examples/shell/submit.sh", "add", "[2,3]"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert '"state":"succeeded"' in out.stdout and '"result":5' in out.stdout
    assert time.monotonic() - started < 15, "submit.sh lingered after the final event"


@pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto-clients not installed")
def test_shell_submit_script_says_when_nothing_answers(mosquitto: MosquittoProcess) -> None:
    env = {**os.environ, "MQTT_PORT": str(mosquitto.port), "QUEUE": "nobody-serves-this", "WAIT": "1"}
    out = subprocess.run(["sh", "examples/shell/submit.sh", "add", "[2,3]"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert "no final status for task sh-" in out.stderr


def _coordinator_online(url: str) -> bool:
    from mqtt_tasks.config import Settings
    from mqtt_tasks.protocol import codec
    from mqtt_tasks.transport import Connection

    seen: list[bytes] = []
    conn = Connection(Settings.from_url(url), f"examples-{os.getpid()}", on_message=lambda m: seen.append(m.payload))
    conn.subscribe("mqtt-tasks/coordinator")
    conn.connect(5)
    try:
        try:
            return wait_until(lambda: any(codec.decode_json_object(p).get("state") == "online" for p in list(seen)), 5)
        except AssertionError:
            return False
    finally:
        conn.close()


def test_the_rate_limited_example_from_the_cli(example_worker: dict[str, str], tmp_path: Path) -> None:
    """examples/README.md: `notify` through a real coordinator and `mqtt-tasks submit` processes (the
    limit itself is measured in tests/test_rate_limits.py): the CLI's producer does not register
    `notify`, so the worker's registration supplies its limit and key."""
    coord = subprocess.Popen([sys.executable, "-m", "mqtt_tasks", "coordinator", "--db", str(tmp_path / "c.db")],
                             cwd=ROOT, env=example_worker, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True)
    try:
        assert coord.stdout is not None and "ready" in coord.stdout.readline()
        assert _coordinator_online(example_worker["MQTT_TASKS_BROKER"])
        cmd = [sys.executable, "-m", "mqtt_tasks", "submit", "notify", "dev-1"]
        outs = [subprocess.run([*cmd, f"hi{i}", "--wait"], cwd=ROOT, env=example_worker, capture_output=True,
                               text=True, timeout=60) for i in range(3)]
        assert [o.stdout.strip() for o in outs] == [f'"dev-1: hi{i}"' for i in range(3)], [o.stderr for o in outs]
        bad = subprocess.run([*cmd, "hi", "--rate-limit", "5/x"], cwd=ROOT, env=example_worker,
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and "malformed" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    finally:
        coord.terminate()
        coord.wait(30)
        if coord.stdout is not None:
            coord.stdout.close()


def test_the_deploy_example_from_the_cli(mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    """examples/README.md, "Rolling out new task code": the commands as written, as processes."""
    env = {**os.environ, "MQTT_TASKS_BROKER": mosquitto.url}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mqtt_tasks", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60)

    key = str(tmp_path / "deployer")
    assert run("deploy", "keygen", key).returncode == 0
    procs = [subprocess.Popen([sys.executable, "-m", "mqtt_tasks", *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
             for argv in (["coordinator", "--db", str(tmp_path / "c.db")],
                          ["worker", "examples.tasks:app", "--accept-deploys", "--deploy-key", key + ".pub",
                           "--deploy-dir", str(tmp_path / "deploy-state"), "--heartbeat", "0.5", "--log-level",
                           "warning"])]
    try:
        for proc in procs:
            assert proc.stdout is not None and "ready" in proc.stdout.readline()
        assert _coordinator_online(mosquitto.url)
        assert run("submit", "text.shout", "hi", "--wait").stdout.strip() == '"HI"'
        # continuous (the default): a worker the coordinator has not heard from yet gets it when it is heard
        started = run("deploy", "examples/deploy/text_tasks.py", "--version", "2", "--to", "all", "--key",
                      key + ".key")
        assert started.returncode == 0, started.stderr
        rollout = started.stdout.split()[1].rstrip(":")
        wait_until(lambda: "completed" in run("deploy", "status", rollout).stdout, 20,
                   message="the example's rollout never completed")
        assert "1/1 applied" in run("deploy", "status", rollout).stdout
        assert run("submit", "text.shout", "hi", "--wait").stdout.strip() == '"HI!"'
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
            if proc.stdout is not None:
                proc.stdout.close()
