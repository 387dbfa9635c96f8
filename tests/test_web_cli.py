"""``mqtt-tasks dashboard`` and ``mqtt-worker --metrics-port`` as real subprocesses; their bad input."""

from __future__ import annotations

import signal
import socket
import sys
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

pytest.importorskip("starlette")

from mqtt_tasks.cli import cli, worker_command  # noqa: E402
from mqtt_tasks.web.server import effective_token, is_loopback  # noqa: E402
from tests.brokers import free_port, wait_until  # noqa: E402
from tests.test_cli import Proc, worker_argv  # noqa: E402


def dashboard_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "mqtt_tasks", "dashboard", *args]


def test_dashboard_subprocess_serves_and_stops_on_sigterm(mosquitto: Any, prefix: str) -> None:
    port = free_port()
    proc = Proc(dashboard_argv("--broker", mosquitto.url, "--prefix", prefix, "--port", str(port), "--timeout", "1"))
    try:
        line = proc.wait_line("mqtt-tasks dashboard on")
        assert f"http://127.0.0.1:{port}/ " in line and "token" not in line
        page = httpx.get(f"http://127.0.0.1:{port}/")
        assert page.status_code == 200 and "<title>mqtt-tasks</title>" in page.text
        assert httpx.get(f"http://127.0.0.1:{port}/static/app.js").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/api/workers").json()["connected"] is True
        code, stderr = proc.stop(signal.SIGTERM)
        assert code == 0, stderr
        assert "Traceback" not in stderr
    finally:
        if proc.popen.poll() is None:
            proc.stop(signal.SIGKILL)


def test_dashboard_beyond_loopback_makes_up_a_token(mosquitto: Any, prefix: str) -> None:
    port = free_port()
    proc = Proc(dashboard_argv("--broker", mosquitto.url, "--prefix", prefix, "--host", "0.0.0.0", "--port",
                               str(port)))
    try:
        line = proc.wait_line("mqtt-tasks dashboard on")
        token = line.split("?token=")[1].split()[0]
        assert len(token) >= 24
        assert httpx.get(f"http://127.0.0.1:{port}/api/workers").status_code == 401
        assert httpx.get(f"http://127.0.0.1:{port}/api/workers",
                         headers={"authorization": f"Bearer {token}"}).status_code == 200
    finally:
        code, stderr = proc.stop(signal.SIGTERM)
        assert code == 0, stderr


def test_worker_metrics_port_subprocess(mosquitto: Any, prefix: str) -> None:
    port = free_port()
    proc = Proc(worker_argv("examples.tasks:app", "--broker", mosquitto.url, "--prefix", prefix, "--worker-id",
                            "wm1", "--concurrency", "2", "--metrics-port", str(port)))
    try:
        proc.wait_line("ready")
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert 'mqtt_tasks_worker_concurrency{worker="wm1"} 2.0' in text
        assert 'mqtt_tasks_worker_online{worker="wm1"} 1.0' in text
    finally:
        code, stderr = proc.stop(signal.SIGTERM)
    assert code == 0, stderr


@pytest.mark.parametrize("args", [["--port", "70000"], ["--timeout", "0"], ["--log-level", "loud"]])
def test_dashboard_bad_options_are_one_line(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["dashboard", *args], prog_name="mqtt-tasks")
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("Error:")


def test_dashboard_port_taken_is_one_line(mosquitto: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = Proc(dashboard_argv("--broker", mosquitto.url, "--port", str(port)))
        code = proc.popen.wait(30)
        _, stderr = proc.stop()
    assert code != 0
    assert "Traceback" not in stderr
    assert len([line for line in stderr.splitlines() if line.strip()]) == 1, stderr


def test_worker_metrics_port_taken_is_one_line(mosquitto: Any, prefix: str) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(worker_command, ["examples.tasks:app", "--broker", mosquitto.url, "--prefix",
                                                     prefix, "--metrics-port", str(port), "--log-level", "error"],
                                    prog_name="mqtt-worker")
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1].startswith(f"Error: --metrics-port {port}:")


def test_token_only_off_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    assert effective_token("127.0.0.1", None) is None
    assert effective_token("127.0.0.1", "t") == "t"
    made_up = effective_token("0.0.0.0", None)
    assert made_up and made_up != effective_token("0.0.0.0", None)


def test_the_core_never_imports_the_web_extras() -> None:
    """A worker on a device installs none of them: the CLI, worker, producer and coordinator load none."""
    import subprocess

    code = ("import sys, mqtt_tasks, mqtt_tasks.cli, mqtt_tasks.worker, mqtt_tasks.app, mqtt_tasks.coordinator; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('starlette', 'uvicorn', 'prometheus_client', 'playwright', 'httpx') or m.startswith('mqtt_tasks.web')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _two_free_ports() -> int | None:
    port = free_port()
    try:
        with socket.socket() as probe:
            probe.bind(("0.0.0.0", port + 1))
    except OSError:
        return None
    return port


def test_worker_metrics_port_per_process_under_a_supervisor(mosquitto: Any, prefix: str) -> None:
    """``-p 2 --metrics-port P``: the two worker processes serve P and P + 1."""
    port = wait_until(_two_free_ports, timeout=5, message="no two free ports in a row")
    proc = Proc(worker_argv("examples.tasks:app", "--broker", mosquitto.url, "--prefix", prefix, "--worker-id",
                            "wsup", "-p", "2", "--metrics-port", str(port)))

    def scraped(p: int) -> str | None:
        try:
            return httpx.get(f"http://127.0.0.1:{p}/metrics").text
        except httpx.HTTPError:
            return None

    try:
        first = wait_until(lambda: scraped(port), timeout=20, interval=0.1, message="no metrics on the first port")
        second = wait_until(lambda: scraped(port + 1), timeout=20, interval=0.1, message="none on the second")
        assert 'worker="wsup-0"' in first and 'worker="wsup-1"' in second
    finally:
        code, stderr = proc.stop(signal.SIGTERM)
    assert code == 0, stderr


@pytest.mark.parametrize(("blocked", "argv", "says"), [
    ("starlette", "from mqtt_tasks.cli import main as run; sys.argv = ['mqtt-tasks', 'dashboard']", "mqtt-tasks[web]"),
    ("prometheus_client", "from mqtt_tasks.cli import worker_main as run; sys.argv = ['mqtt-worker', "
     "'examples.tasks:app', '--metrics-port', '9', '--broker', 'mqtt://127.0.0.1:1']", "mqtt-tasks[metrics]"),
])
def test_a_missing_extra_is_one_line_and_exit_7(blocked: str, argv: str, says: str) -> None:
    import subprocess

    from tests.coord_helpers import ROOT

    code = f"import sys; sys.modules[{blocked!r}] = None; {argv}; run()"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 7, done.stderr
    assert done.stderr.count("\n") == 1 and says in done.stderr and "Traceback" not in done.stderr
