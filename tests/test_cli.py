"""The CLI: click's runner in-process against both brokers, and once as real subprocesses."""

from __future__ import annotations

import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from mqtt_tasks import Settings, TaskApp, Worker
from mqtt_tasks.cli import (
    RET_CONNECT,
    RET_ERROR,
    RET_INTERRUPTED,
    RET_MISSING_EXTRA,
    RET_OK,
    RET_TASK_FAILED,
    RET_TIMEOUT,
    RET_USAGE,
    cli,
    fetch_worker_states,
    parse_arg,
    worker_command,
    worker_settings,
)
from mqtt_tasks.protocol import codec
from mqtt_tasks.protocol.messages import StatusEvent, WorkerState
from mqtt_tasks.transport import Connection, Message
from tests.brokers import free_port, wait_until

REPO = Path(__file__).resolve().parent.parent


# -- helpers (also used by test_supervisor.py) ------------------------------------------------
class Monitor:
    """Watches ``P/workers/+`` and ``P/status/+``: the latest state per worker, every status event."""

    def __init__(self, url: str, prefix: str) -> None:
        self.settings = Settings.from_url(url, prefix=prefix)
        self.states: dict[str, WorkerState] = {}
        self.events: list[StatusEvent] = []
        self._lock = threading.Lock()
        self.conn = Connection(self.settings, f"test-monitor-{uuid.uuid4().hex[:6]}", on_message=self._on_message)
        self.conn.subscribe(f"{prefix}/workers/+")
        self.conn.subscribe(f"{prefix}/status/+")

    def _on_message(self, message: Message) -> None:
        if not message.payload:
            return
        with self._lock:
            if "/workers/" in message.topic:
                state = codec.decode_worker_state(message.payload)
                self.states[state.worker] = state
            else:
                self.events.append(codec.decode_status(message.payload))

    def state(self, worker: str) -> WorkerState | None:
        with self._lock:
            return self.states.get(worker)

    def events_for(self, task_id: str) -> list[StatusEvent]:
        with self._lock:
            return [e for e in self.events if e.id == task_id]

    def __enter__(self) -> Monitor:
        self.conn.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.close()


class Proc:
    """A subprocess whose stdout lines are read on a thread, so a test can wait for one."""

    def __init__(self, argv: list[str]) -> None:
        self.popen = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.stdout: list[str] = []
        self._reader = threading.Thread(target=self._read, name="test-proc-stdout", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.stdout.append(line)
            self.lines.put(line)

    def wait_line(self, needle: str, timeout: float = 15.0) -> str:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line with {needle!r}; stdout so far: {self.stdout}") from None
            if needle in line:
                return line

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> tuple[int, str]:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        code = self.popen.wait(timeout)
        self._reader.join(5)
        stderr = self.popen.stderr.read() if self.popen.stderr else ""
        if self.popen.stderr:
            self.popen.stderr.close()
        if self.popen.stdout:
            self.popen.stdout.close()
        return code, stderr


def worker_argv(*args: str) -> list[str]:
    """The real ``mqtt-worker`` console script when installed next to this Python, else ``python -m``."""
    script = Path(sys.executable).parent / "mqtt-worker"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "mqtt_tasks", "worker", *args]


def make_app(url: str, prefix: str) -> TaskApp:
    app = TaskApp(url, prefix=prefix)

    @app.task
    def add(a: float, b: float) -> float:
        return a + b

    @app.task
    def echo(*args: Any, **kwargs: Any) -> list[Any]:
        return [list(args), kwargs]

    @app.task
    def divide(a: float, b: float) -> float:
        return a / b

    return app


@pytest.fixture
def running_worker(broker_url: str, prefix: str) -> Iterator[Worker]:
    app = make_app(broker_url, prefix)
    worker = Worker(app, worker_id=f"cli-{prefix}", concurrency=4, grace=5.0).start()
    try:
        yield worker
    finally:
        worker.stop()
        app.close()


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="mqtt-tasks")


def assert_one_line_error(result: Result, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in result.output
    return lines[0]


# -- submit -------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "value"), [("2", 2), ("2.5", 2.5), ("true", True), ("null", None),
                                              ('{"a": [1]}', {"a": [1]}), ("hello", "hello"), ("[1", "[1")])
def test_parse_arg_is_json_where_valid_else_string(text: str, value: Any) -> None:
    assert parse_arg(text) == value


def test_submit_wait_prints_the_result(running_worker: Worker, broker_url: str, prefix: str) -> None:
    result = run("submit", "add", "2", "3", "--wait", "--broker", broker_url, "--prefix", prefix)
    assert result.exit_code == RET_OK, result.output
    assert result.stdout == "5\n"


def test_submit_parses_args_and_kwargs(running_worker: Worker, broker_url: str, prefix: str) -> None:
    result = run("submit", "echo", "1", "x", "[1, 2]", "--kwargs", '{"k": null}', "--wait",
                 "--broker", broker_url, "--prefix", prefix)
    assert result.exit_code == RET_OK, result.output
    assert json.loads(result.stdout) == [[1, "x", [1, 2]], {"k": None}]


def test_submit_without_wait_prints_the_id(running_worker: Worker, broker_url: str, prefix: str) -> None:
    result = run("submit", "add", "1", "1", "--broker", broker_url, "--prefix", prefix)
    assert result.exit_code == RET_OK, result.output
    task_id = result.stdout.strip()
    assert len(task_id) == 32
    wait_until(lambda: running_worker.stats["succeeded"] == 1, message="the submitted task never ran")


def test_submit_remote_error_is_one_line_and_nonzero(running_worker: Worker, broker_url: str, prefix: str) -> None:
    result = run("submit", "divide", "1", "0", "--wait", "--broker", broker_url, "--prefix", prefix)
    line = assert_one_line_error(result, RET_TASK_FAILED)
    assert "ZeroDivisionError" in line
    assert result.stdout == ""


# -- workers ------------------------------------------------------------------------------
def test_workers_lists_the_retained_states(running_worker: Worker, broker_url: str, prefix: str) -> None:
    def listed() -> list[dict[str, Any]]:
        result = run("workers", "--json", "--broker", broker_url, "--prefix", prefix)
        assert result.exit_code == RET_OK, result.output
        return [w for w in json.loads(result.stdout) if w["worker"] == running_worker.worker_id]

    (state,) = wait_until(listed, timeout=10)
    assert state["state"] == "online"
    assert state["queues"] == ["default"]
    assert state["concurrency"] == 4
    table = run("workers", "--broker", broker_url, "--prefix", prefix)
    assert table.exit_code == RET_OK
    assert running_worker.worker_id in table.stdout and "online" in table.stdout


def test_workers_with_none_reporting(broker_url: str, prefix: str) -> None:
    states = fetch_worker_states(Settings.from_url(broker_url, prefix=prefix), quiet=0.1)
    assert states == []
    result = run("workers", "--broker", broker_url, "--prefix", prefix)
    assert result.exit_code == RET_OK
    assert "no workers" in result.stdout


# -- errors -------------------------------------------------------------------------------
def test_bad_kwargs_json() -> None:
    line = assert_one_line_error(run("submit", "add", "--kwargs", "{bad"), RET_USAGE)
    assert "--kwargs is not valid JSON" in line
    assert_one_line_error(run("submit", "add", "--kwargs", "[1]"), RET_USAGE)


def test_unknown_option() -> None:
    line = assert_one_line_error(run("submit", "add", "--bogus"), RET_USAGE)
    assert "--bogus" in line


def test_unreachable_broker() -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"
    for args in (["submit", "add", "1", "2", "--wait"], ["workers"]):
        line = assert_one_line_error(run(*args, "--broker", url), RET_CONNECT)
        assert "cannot reach the MQTT broker" in line


def test_bad_broker_url() -> None:
    assert_one_line_error(run("workers", "--broker", "http://x"), RET_USAGE)


@pytest.mark.parametrize(("ref", "needle"), [
    ("no_such_module_xyz:app", "no module named"),
    ("examples.tasks:nope", "has no attribute"),
    ("examples.tasks:add", "not a TaskApp"),
    ("examples.tasks", "MODULE:ATTR"),
])
def test_worker_bad_module(ref: str, needle: str) -> None:
    result = CliRunner().invoke(worker_command, [ref, "--log-level", "error"], prog_name="mqtt-worker")
    assert needle in assert_one_line_error(result, RET_USAGE)


def test_worker_unreachable_broker() -> None:
    result = CliRunner().invoke(worker_command, ["examples.tasks:app", "--log-level", "error", "--broker",
                                                 f"mqtt://127.0.0.1:{free_port()}"], prog_name="mqtt-worker")
    assert "cannot reach" in assert_one_line_error(result, RET_CONNECT)


def test_worker_bad_queue_name() -> None:
    result = CliRunner().invoke(worker_command, ["examples.tasks:app", "--queue", "a/b"], prog_name="mqtt-worker")
    assert "invalid queue" in assert_one_line_error(result, RET_USAGE)


def test_broker_without_amqtt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mqtt_tasks.broker", None)  # import now raises ImportError
    line = assert_one_line_error(run("broker", "--port", "0"), RET_MISSING_EXTRA)
    assert "pip install 'mqtt-tasks[broker]'" in line


def test_python_dash_m_runs_the_group() -> None:
    done = subprocess.run([sys.executable, "-m", "mqtt_tasks", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0
    for command in ("submit", "workers", "worker", "broker", "demo"):
        assert command in done.stdout


# -- real subprocesses --------------------------------------------------------------------
def test_worker_subprocess_round_trip_and_graceful_sigterm(mosquitto: Any, prefix: str) -> None:
    worker_id = f"sub-{prefix}"
    proc = Proc(worker_argv("examples.tasks:app", "--broker", mosquitto.url, "--prefix", prefix,
                            "--worker-id", worker_id, "--concurrency", "2"))
    try:
        assert worker_id in proc.wait_line("ready")
        with Monitor(mosquitto.url, prefix) as monitor, TaskApp(mosquitto.url, prefix=prefix) as app:
            assert app.submit("add", 2, 3).result(timeout=10) == 5
            slow = app.submit("slow", 1.0, "finished")
            wait_until(lambda: any(e.state == "started" for e in monitor.events_for(slow.id)),
                       message="the slow task never started")
            code, stderr = proc.stop(signal.SIGTERM)
            assert code == 0, stderr
            assert "Traceback" not in stderr
            assert slow.result(timeout=5) == "finished"  # it ran to the end during the drain
            state = wait_until(lambda: (s := monitor.state(worker_id)) is not None and s.state == "offline" and s)
            assert state.tasks == []
    finally:
        if proc.popen.poll() is None:
            proc.stop(signal.SIGKILL)


def test_submit_subprocess_against_a_worker(mosquitto: Any, prefix: str) -> None:
    app = make_app(mosquitto.url, prefix)
    with Worker(app, worker_id=f"w-{prefix}", concurrency=2, grace=5.0):
        done = subprocess.run([sys.executable, "-m", "mqtt_tasks", "submit", "add", "2", "3", "--wait",
                               "--broker", mosquitto.url, "--prefix", prefix],
                              cwd=REPO, capture_output=True, text=True, timeout=30)
    app.close()
    assert (done.returncode, done.stdout, done.stderr) == (0, "5\n", "")


def test_broker_command_subprocess() -> None:
    port = free_port()
    proc = Proc([sys.executable, "-m", "mqtt_tasks", "broker", "--port", str(port)])
    try:
        assert f":{port}" in proc.wait_line("listening")
        conn = Connection(Settings.from_url(f"mqtt://127.0.0.1:{port}"), "probe").connect()
        conn.close()
        code, stderr = proc.stop(signal.SIGTERM)
        assert code == 0, stderr
    finally:
        if proc.popen.poll() is None:
            proc.stop(signal.SIGKILL)



# -- coordinator queries ------------------------------------------------------------------
def test_status_and_tasks_from_the_coordinator(mosquitto: Any, prefix: str) -> None:
    from mqtt_tasks.cli import RET_NOT_FOUND
    from mqtt_tasks.coordinator import Coordinator

    url = mosquitto.url
    settings = Settings.from_url(url, prefix=prefix)
    app = make_app(url, prefix)
    with Coordinator(settings), Worker(app, worker_id=f"w-{prefix}", concurrency=2, grace=5.0):
        submitted = run("submit", "add", "20", "22", "--wait", "--broker", url, "--prefix", prefix)
        assert submitted.stdout == "42\n", submitted.output
        listed = wait_until(lambda: json.loads(run("tasks", "--json", "--broker", url, "--prefix", prefix).stdout))
        (task_id,) = [t["id"] for t in listed if t["task"] == "add"]

        def succeeded() -> Any:
            record = json.loads(run("status", task_id, "--broker", url, "--prefix", prefix).stdout)
            return record if record["state"] == "succeeded" else None

        assert wait_until(succeeded)["result"] == 42
        table = run("tasks", "--broker", url, "--prefix", prefix)
        assert table.exit_code == RET_OK and task_id in table.stdout  # whole, so it can be pasted
        assert " default " in table.stdout  # the queue column
        assert_one_line_error(run("status", "no-such-task", "--broker", url, "--prefix", prefix), RET_NOT_FOUND)
    app.close()


def test_status_without_a_coordinator(mosquitto: Any, prefix: str) -> None:
    result = run("status", "x", "--broker", mosquitto.url, "--prefix", prefix, "--timeout", "0.3")
    assert "no coordinator answered" in assert_one_line_error(result, RET_CONNECT)


def test_stats_from_the_coordinator_readable_and_json(mosquitto: Any, prefix: str) -> None:
    from mqtt_tasks.coordinator import Coordinator

    url = mosquitto.url
    broker = ["--broker", url, "--prefix", prefix]
    app = make_app(url, prefix)
    with Coordinator(Settings.from_url(url, prefix=prefix)) as c, \
            Worker(app, worker_id=f"w-{prefix}", concurrency=2, grace=5.0):
        assert run("submit", "add", "1", "2", "--wait", *broker).stdout == "3\n"
        held = run("submit", "add", "1", "2", "--delay", "600", *broker)  # the coordinator holds it: scheduled
        assert held.exit_code == RET_OK, held.output
        wait_until(lambda: c.live_count == 1 and f"w-{prefix}" in c.workers(), 10)
        answer = wait_until(lambda: (a := json.loads(run("stats", "--json", *broker).stdout))["counts"].get(
            "succeeded") and a)
        assert answer["counts"] == {"succeeded": 1, "scheduled": 1} and answer["live"] == 1
        assert answer["workers"][f"w-{prefix}"]["state"] == "online" and answer["workers_total"] == 1
        assert "correlation" not in answer and "ok" not in answer
        text = run("stats", *broker)
        assert text.exit_code == RET_OK, text.output
        lines = text.stdout.splitlines()
        assert lines[1:4] == ["tasks:    1 succeeded, 1 scheduled", "live:     1", "backlog:  0; 0 rate-limited"]
        assert lines[4] in ("workers:  1 (1 online); 2 free slot(s)", "workers:  1 (1 online); 1 free slot(s)")
        assert any(ln.split()[:2] == [f"w-{prefix}", "online"] for ln in lines[6:]), text.stdout
    app.close()
    result = run("stats", *broker, "--timeout", "0.3")
    assert "no coordinator answered" in assert_one_line_error(result, RET_CONNECT)


def test_stats_lines_say_what_the_answer_holds() -> None:
    from mqtt_tasks.cli import stats_lines

    answer = {"counts": {"dead": 2, "backlog": 3, "queued": 1, "cancelled": 0}, "live": 4, "backlog": 3,
              "backlog_by_queue": {"images": 1, "default": 2}, "rate_limited": 1, "workers_total": 1200,
              "workers_by_state": {"online": 1100, "offline": 100}, "free_slots": 40,
              "workers": {f"w{i}": {"state": "online", "free": 0, "labels": []} for i in range(1000)},
              "stats": {"recorded": 9, "dead": 2, "retried": 0}}
    assert stats_lines(answer, "mqtt://b (prefix P)") == [
        "coordinator at mqtt://b (prefix P)",
        "tasks:    1 queued, 3 backlog, 2 dead",
        "live:     4",
        "backlog:  3 (2 default, 1 images); 1 rate-limited",
        "workers:  1200 (100 offline, 1100 online); 40 free slot(s)",
        "counters: dead 2, recorded 9",
        "(the first 1000 workers by name below; --json for the answer)"]
    broken = stats_lines({"store_error": "disk I/O error", "live": 0}, "x")
    assert broken[1] == "tasks:    not counted: disk I/O error" and broken[4] == "workers:  0; 0 free slot(s)"


# -- what a new user typed (each one printed a traceback or misled) -----------------------------
@pytest.mark.parametrize("args", [
    ["submit", "add", "1e400", "1"],
    ["submit", "add", "[1,NaN]"],
    ["submit", "add", "1", "--kwargs", '{"a": NaN}'],
    ["submit", "add", "1", "--kwargs", '{"a": -1e999}'],
    ["submit", "add", "1", "--kwargs", '{"a": Infinity}'],
])
def test_numbers_json_cannot_carry_are_refused_in_one_line(args: list[str]) -> None:
    assert_one_line_error(run(*args), RET_USAGE)


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity"])
def test_bare_nan_and_infinity_are_strings_as_any_non_json_argument(text: str) -> None:
    assert parse_arg(text) == text


def test_malformed_broker_url_is_one_line() -> None:
    line = assert_one_line_error(run("workers", "--broker", "mqtt://[::1"), RET_USAGE)
    assert "malformed broker URL" in line


def test_acl_with_an_unwritable_password_file_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["acl", "worker", "w1", "--password", "secret-password",
                                      "--password-file", str(tmp_path / "missing-dir" / "pw"),
                                      "--acl-file", str(tmp_path / "acl")], prog_name="mqtt-tasks")
    assert "cannot write" in assert_one_line_error(result, RET_USAGE)


def test_broker_on_a_taken_port_is_one_line() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "mqtt_tasks", "broker", "--port", str(port)], cwd=REPO,
                              capture_output=True, text=True, timeout=30)
    assert done.returncode == RET_ERROR
    expected = f"Error: embedded MQTT broker cannot listen on 127.0.0.1:{port}: address already in use"
    assert done.stderr.strip() == expected


def test_tasks_refuses_an_unknown_state() -> None:
    line = assert_one_line_error(run("tasks", "--state", "bogus"), RET_USAGE)
    assert "'dead'" in line  # it lists the states there are


@pytest.mark.parametrize(("args", "says"), [
    (["--before", "not-a-cursor"], "not a cursor"), (["--before", ""], "not a cursor"),
    (["--queue", "a b"], "invalid queue"), (["--limit", "0"], "--limit"),
])
def test_tasks_refuses_a_bad_filter_or_cursor_before_asking(args: list[str], says: str) -> None:
    assert says in assert_one_line_error(run("tasks", *args, "--broker", "mqtt://127.0.0.1:1"), RET_USAGE)


def test_submit_wait_on_a_queue_nobody_serves_says_so(running_worker: Worker, broker_url: str, prefix: str) -> None:
    result = run("submit", "add", "1", "2", "--wait", "--timeout", "1", "--queue", "nobody",
                 "--broker", broker_url, "--prefix", prefix)
    line = assert_one_line_error(result, RET_TIMEOUT)
    assert "no online worker serves queue 'nobody'" in line


def test_ctrl_c_during_submit_wait_prints_the_task_id(mosquitto: Any, prefix: str) -> None:
    seen: queue.SimpleQueue[Message] = queue.SimpleQueue()
    watcher = Connection(Settings.from_url(mosquitto.url), f"watch-{prefix}", on_message=seen.put)
    watcher.subscribe(f"{prefix}/tasks/+")
    watcher.connect()
    try:
        proc = Proc([sys.executable, "-m", "mqtt_tasks", "submit", "add", "1", "2", "--wait",
                     "--broker", mosquitto.url, "--prefix", prefix])
        task_id = json.loads(seen.get(timeout=15).payload)["id"]  # it is waiting for the result now
        code, stderr = proc.stop(signal.SIGINT)
    finally:
        watcher.close()
    assert code == RET_INTERRUPTED
    assert stderr.strip() == (f"Error: interrupted; task {task_id} was submitted and may still run "
                              f"(mqtt-tasks status {task_id})")


def test_ctrl_c_while_the_broker_does_not_answer_says_the_task_was_not_published(prefix: str) -> None:
    """A broker that accepts the TCP connection and never sends CONNACK: submit waits for it (up to its
    connect timeout, 10 s); Ctrl-C ends it at once and says nothing was sent."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent.settimeout(15)
        url = f"mqtt://127.0.0.1:{silent.getsockname()[1]}"
        proc = Proc([sys.executable, "-m", "mqtt_tasks", "submit", "add", "1", "2", "--wait",
                     "--broker", url, "--prefix", prefix])
        client, _ = silent.accept()  # it is waiting for the CONNACK now
        with client:
            code, stderr = proc.stop(signal.SIGINT, timeout=8.0)  # well before the connect timeout
    assert code == RET_INTERRUPTED
    assert stderr.strip() == f"Error: interrupted while connecting to {url}; the task was not published"


def test_the_command_line_overrides_the_app_and_the_app_overrides_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTT_TASKS_BROKER", "mqtt://env-host:1111?prefix=envprefix")
    named = TaskApp("mqtt://code-host:2222", prefix="codeprefix")
    unnamed = TaskApp()
    try:
        chosen = worker_settings(named, None, None, None)
        assert (chosen.host, chosen.port, chosen.prefix) == ("code-host", 2222, "codeprefix")
        chosen = worker_settings(unnamed, None, None, None)
        assert (chosen.host, chosen.port, chosen.prefix) == ("env-host", 1111, "envprefix")
        chosen = worker_settings(named, "mqtt://cli-host:3333", None, 9.0)
        assert (chosen.host, chosen.port, chosen.prefix, chosen.heartbeat_s) == ("cli-host", 3333, "codeprefix", 9.0)
        chosen = worker_settings(named, "mqtt://cli-host:3333?prefix=urlprefix", None, None)
        assert chosen.prefix == "urlprefix"
        assert worker_settings(named, "mqtt://cli-host:3333?prefix=urlprefix", "cliprefix", None).prefix == "cliprefix"
    finally:
        named.close()
        unnamed.close()


def test_worker_ready_line_names_broker_and_prefix(mosquitto: Any, prefix: str) -> None:
    proc = Proc(worker_argv("examples.tasks:app", "--broker", mosquitto.url, "--prefix", prefix))
    try:
        line = proc.wait_line("ready")
        assert f"on {mosquitto.url}, prefix {prefix}," in line
    finally:
        proc.stop(signal.SIGTERM)



def test_worker_cancel_grace_and_progress_every_reach_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    from mqtt_tasks import supervisor

    built: list[Worker] = []
    monkeypatch.setattr(supervisor, "serve", lambda worker, on_ready=None: built.append(worker))
    result = CliRunner().invoke(worker_command, ["examples.tasks:app", "--broker", "mqtt://127.0.0.1:1",
                                                 "--cancel-grace", "0.5", "--progress-every", "0.2"],
                                prog_name="mqtt-worker")
    assert result.exit_code == 0, result.output
    (worker,) = built
    assert (worker.cancel_grace, worker.progress_every) == (0.5, 0.2)
    worker.stop()
    assert_one_line_error(CliRunner().invoke(worker_command, ["examples.tasks:app", "--progress-every", "0"],
                                             prog_name="mqtt-worker"), RET_USAGE)
