"""Conformance: a running worker, alone and with a coordinator, driven from outside Python.

Nothing here talks to the worker through the library: tasks go in with `mosquitto_pub` and the
Node.js example (examples/node), results come back through `mosquitto_sub` and HTTP. Only
docs/protocol.md is assumed. Synchronisation reads subprocess output with deadlines; no sleeps.

The Node tests need node and npm (`npm ci --prefix examples/node` is run once per session
when node_modules is missing or stale); without node they are skipped, unless
MQTT_TASKS_REQUIRE_NODE=1 turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from mqtt_tasks.app import TaskApp
from mqtt_tasks.config import Settings
from mqtt_tasks.coordinator import Coordinator
from mqtt_tasks.leases import LeasePolicy
from mqtt_tasks.worker import Worker
from tests.brokers import MosquittoProcess, wait_until

NODE_DIR = Path(__file__).resolve().parent.parent / "examples" / "node"
REQUIRE_NODE_ENV = "MQTT_TASKS_REQUIRE_NODE"
TIMEOUT = 10.0

Line = tuple[str, str, Any]  # topic, correlation data, decoded payload (or the raw text)


class Subprocess:
    """A subprocess whose stdout lines are read by a thread and waited for with deadlines."""

    def __init__(self, argv: list[str], **kwargs: Any) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)
        self.lines: queue.Queue[str] = queue.Queue()
        self.transcript: list[str] = []
        self._reader = threading.Thread(target=self._read, name=f"reader-{argv[0]}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def next_line(self, predicate: Callable[[str], bool], timeout: float = TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            self.transcript.append(line)
            if predicate(line):
                return line
        raise AssertionError(f"no matching line within {timeout}s; output so far:\n" + "\n".join(self.transcript))

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)  # the reader ends at EOF; closing the pipe under it would raise in its thread
        if self.proc.stdout is not None and not self._reader.is_alive():
            self.proc.stdout.close()


class MosquittoSub(Subprocess):
    """`mosquitto_sub -d`: returns once the SUBACK is in; prints `topic<TAB>correlation<TAB>payload`."""

    def __init__(self, broker: MosquittoProcess, *topics: str, mqtt5: bool = False) -> None:
        # stdbuf: mosquitto_sub's stdout is block-buffered when it is a pipe.
        argv = ["stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-d",
                "-F", "%t\t%D\t%p"]
        if mqtt5:
            argv += ["-V", "mqttv5"]
        for topic in topics:
            argv += ["-t", topic]
        super().__init__(argv)
        self.next_line(lambda line: line.startswith("Subscribed (mid"))

    def expect(self, predicate: Callable[[Line], bool], timeout: float = TIMEOUT) -> Line:
        found: list[Line] = []

        def matches(line: str) -> bool:
            parts = line.split("\t", 2)
            if len(parts) != 3:
                return False  # a debug line
            try:
                body = json.loads(parts[2])
            except ValueError:
                body = parts[2]
            item = (parts[0], parts[1], body)
            if predicate(item):
                found.append(item)
                return True
            return False

        self.next_line(matches, timeout)
        return found[0]


def mosquitto_pub(broker: MosquittoProcess, topic: str, payload: str | dict[str, Any], *extra: str) -> None:
    message = payload if isinstance(payload, str) else json.dumps(payload)
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-t", topic,
                    "-m", message, *extra], check=True, timeout=TIMEOUT)


def final_event(task_id: str) -> Callable[[Line], bool]:
    return lambda item: isinstance(item[2], dict) and item[2].get("id") == task_id and item[2].get("final") is True


# -- the worker under test -------------------------------------------------------------------

@pytest.fixture(params=["worker", "worker+coordinator"])
def worker(request: pytest.FixtureRequest, mosquitto: MosquittoProcess, prefix: str) -> Iterator[Worker]:
    """A worker (concurrency 2), alone or with a coordinator online: the contract is the same."""
    if not all(shutil.which(tool) for tool in ("mosquitto_pub", "mosquitto_sub", "stdbuf")):
        pytest.skip("mosquitto_pub, mosquitto_sub (Debian: mosquitto-clients) and stdbuf (coreutils) are needed")
    app = TaskApp(broker=mosquitto.url, prefix=prefix)

    @app.task
    def add(a: float, b: float) -> float:
        return a + b

    @app.task(name="text.upper")
    def upper(text: str, *, repeat: int = 1) -> str:
        return text.upper() * repeat

    @app.task
    def nap(seconds: float) -> str:
        time.sleep(seconds)  # a task body that takes a while, past the worker's started_after
        return "rested"

    with ExitStack() as stack:
        if request.param == "worker+coordinator":
            coordinator = Coordinator(Settings.from_url(mosquitto.url, prefix=prefix), None,
                                      policy=LeasePolicy(backoff_base=0.05, backoff_cap=0.2))
            stack.callback(coordinator.stop)
            coordinator.start()
        w = Worker(app, concurrency=2, heartbeat_s=0.5, worker_id=f"conf-{prefix}").start()
        stack.callback(app.close)
        stack.callback(w.stop, grace=5)
        if request.param == "worker+coordinator":
            wait_until(lambda: w.coordinator_online, TIMEOUT, message="the worker never saw the coordinator")
        yield w


@pytest.fixture
def subs(mosquitto: MosquittoProcess) -> Iterator[Callable[..., MosquittoSub]]:
    made: list[MosquittoSub] = []

    def make(*topics: str, mqtt5: bool = False) -> MosquittoSub:
        sub = MosquittoSub(mosquitto, *topics, mqtt5=mqtt5)
        made.append(sub)
        return sub

    yield make
    for sub in made:
        sub.close()


# -- mosquitto_pub / mosquitto_sub ----------------------------------------------------------

def test_submit_and_result(worker: Worker, mosquitto: MosquittoProcess, subs: Any, prefix: str) -> None:
    sub = subs(f"{prefix}/status/job-1")
    mosquitto_pub(mosquitto, f"{prefix}/tasks/default", {"id": "job-1", "task": "add", "args": [2, 3]})
    first = sub.expect(lambda item: isinstance(item[2], dict))[2]
    # Shorter than started_after: the final event is the only one (docs/protocol.md).
    assert (first["state"], first["result"], first["task"], first["queue"]) == ("succeeded", 5, "add", "default")
    assert first["final"] is True and first["worker"] == worker.worker_id and first["attempt"] == 1


def test_a_longer_task_is_announced_started_first(worker: Worker, mosquitto: MosquittoProcess, subs: Any,
                                                  prefix: str) -> None:
    sub = subs(f"{prefix}/status/job-long")
    sent = time.time()
    mosquitto_pub(mosquitto, f"{prefix}/tasks/default", {"id": "job-long", "task": "nap", "args": [0.6]})
    started = sub.expect(lambda item: isinstance(item[2], dict))[2]
    assert started["state"] == "started"
    assert started["worker"] == worker.worker_id and started["attempt"] == 1
    done = sub.expect(final_event("job-long"))[2]
    assert (done["state"], done["result"]) == ("succeeded", "rested")
    # `ts` of `started` is when the task really started, not when the event was sent.
    assert sent - 1 <= started["ts"] <= done["ts"] - 0.5


def test_kwargs_and_dotted_task_name(worker: Worker, mosquitto: MosquittoProcess, subs: Any, prefix: str) -> None:
    sub = subs(f"{prefix}/status/+")
    mosquitto_pub(mosquitto, f"{prefix}/tasks/default",
                  {"id": "job-kw", "task": "text.upper", "args": ["ab"], "kwargs": {"repeat": 2}})
    assert sub.expect(final_event("job-kw"))[2]["result"] == "ABAB"


def test_request_response_mqtt5_correlation_data(worker: Worker, mosquitto: MosquittoProcess, subs: Any,
                                                 prefix: str) -> None:
    reply = f"{prefix}/replies/my-client"
    sub = subs(reply, mqtt5=True)
    mosquitto_pub(mosquitto, f"{prefix}/tasks/default", {"id": "rr-5", "task": "add", "args": [4, 5]},
                  "-V", "mqttv5", "-D", "publish", "response-topic", reply,
                  "-D", "publish", "correlation-data", "req-42")
    topic, correlation, event = sub.expect(lambda item: True)
    assert (topic, correlation) == (reply, "req-42")
    assert (event["id"], event["state"], event["result"], event["final"]) == ("rr-5", "succeeded", 9, True)


def test_request_response_mqtt311_fields(worker: Worker, mosquitto: MosquittoProcess, subs: Any,
                                         prefix: str) -> None:
    reply = f"app-{prefix}/replies"  # any topic outside P/, or under P/replies/
    sub = subs(reply)
    mosquitto_pub(mosquitto, f"{prefix}/tasks/default",
                  {"id": "rr-3", "task": "add", "args": [1, 1], "reply_to": reply, "correlation": "req-7"})
    topic, _, event = sub.expect(lambda item: True)
    assert topic == reply
    assert (event["id"], event["state"], event["result"], event["correlation"]) == ("rr-3", "succeeded", 2, "req-7")


def test_unregistered_task_fails_clearly_and_nothing_is_stuck(worker: Worker, mosquitto: MosquittoProcess,
                                                              subs: Any, prefix: str) -> None:
    sub = subs(f"{prefix}/status/+", f"{prefix}/workers/+")
    mosquitto_pub(mosquitto, f"{prefix}/tasks/default", {"id": "nope-1", "task": "does.not.exist"})
    event = sub.expect(final_event("nope-1"))[2]
    # Alone, the worker ends it at once; a coordinator retries it (another worker in the group
    # may know the name) and buries it when the attempts are used up.
    assert event["state"] == ("dead" if worker.coordinator_online else "failed")
    assert event["error"]["type"] == "UnknownTaskError" and "does.not.exist" in event["error"]["message"]
    # The worker holds nothing and has every slot free: a later heartbeat says so ...
    beat = sub.expect(lambda item: item[0].startswith(f"{prefix}/workers/") and item[2]["ts"] > event["ts"])[2]
    assert (beat["state"], beat["tasks"], beat["free"]) == ("online", [], 2)
    # ... and the next task runs.
    mosquitto_pub(mosquitto, f"{prefix}/tasks/default", {"id": "after-1", "task": "add", "args": [1, 2]})
    assert sub.expect(final_event("after-1"))[2]["result"] == 3


def test_unknown_extra_fields_are_ignored(worker: Worker, mosquitto: MosquittoProcess, subs: Any,
                                          prefix: str) -> None:
    sub = subs(f"{prefix}/status/+")
    mosquitto_pub(mosquitto, f"{prefix}/tasks/default",
                  {"id": "extra-1", "task": "add", "args": [3, 4], "priority": "high", "trace": {"span": [1, 2]},
                   "x-custom": None})
    event = sub.expect(final_event("extra-1"))[2]
    assert (event["state"], event["result"]) == ("succeeded", 7)


@pytest.mark.parametrize(("payload", "reason"), [
    ("this is not json", "JSON"),
    ('["a", "list"]', "object"),
    ('{"task": "add", "args": [1, 2]}', "id"),
    ('{"id": "has space", "task": "add"}', "id"),
    ('{"id": "bad-args", "task": "add", "args": {"a": 1}}', "args"),
])
def test_invalid_message_is_reported_on_errors(worker: Worker, mosquitto: MosquittoProcess, subs: Any,
                                               prefix: str, payload: str, reason: str) -> None:
    sub = subs(f"{prefix}/errors", f"{prefix}/status/+")
    mosquitto_pub(mosquitto, f"{prefix}/tasks/default", payload)
    report = sub.expect(lambda item: item[0] == f"{prefix}/errors" and item[2]["component"] == "worker")[2]
    assert report["component"] == "worker" and report["source"] == worker.worker_id
    assert report["topic"] == f"{prefix}/tasks/default"
    assert reason in report["reason"] and report["payload"] == payload and report["size"] == len(payload)
    # The next good message is processed.
    mosquitto_pub(mosquitto, f"{prefix}/tasks/default", {"id": "good-1", "task": "add", "args": [1, 1]})
    assert sub.expect(final_event("good-1"))[2]["result"] == 2
    # the final event goes out before the worker drops the task from its held set
    wait_until(lambda: worker.held == [], TIMEOUT, message="the worker still holds the task")


# -- the Node.js example --------------------------------------------------------------------

@pytest.fixture(scope="session")
def node_example() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        reason = "node and npm are needed for the examples/node conformance tests"
        if os.environ.get(REQUIRE_NODE_ENV) == "1":
            pytest.fail(f"{reason}; required because {REQUIRE_NODE_ENV}=1", pytrace=False)
        pytest.skip(reason)
    installed = NODE_DIR / "node_modules" / ".package-lock.json"
    lock = NODE_DIR / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR)], check=True,
                       timeout=300, capture_output=True)
    return NODE_DIR


class NodeService(Subprocess):
    def __init__(self, broker: Any, prefix: str, **env: str) -> None:
        environ = {**os.environ, "MQTT_URL": broker.url, "PREFIX": prefix, "PORT": "0", "LOG_LEVEL": "info", **env}
        super().__init__(["node", str(NODE_DIR / "server.js")], env=environ, cwd=NODE_DIR)
        ready = self.next_line(lambda line: '"msg":"ready"' in line, timeout=20)
        self.url = json.loads(ready)["url"]

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"content-type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT + 5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, json.loads(exc.read())


@pytest.fixture(params=["5", "4"], ids=["mqtt5", "mqtt311"])
def node(request: pytest.FixtureRequest, node_example: Path, worker: Worker, mosquitto: MosquittoProcess,
         prefix: str) -> Iterator[NodeService]:
    service = NodeService(mosquitto, prefix, MQTT_VERSION=request.param)
    yield service
    service.close()


def test_node_post_and_wait_for_result(node: NodeService) -> None:
    status, event = node.request("POST", "/tasks", {"task": "add", "args": [2, 3], "wait": True, "timeout": 10})
    assert status == 200
    assert (event["state"], event["result"], event["final"]) == ("succeeded", 5, True)
    status, last = node.request("GET", f"/tasks/{event['id']}")
    assert status == 200 and last["state"] == "succeeded"


def test_node_post_returns_id_then_get_reports_status(node: NodeService) -> None:
    status, accepted = node.request("POST", "/tasks", {"id": "node-1", "task": "text.upper", "args": ["hi"],
                                                       "kwargs": {"repeat": 3}})
    assert (status, accepted["id"]) == (202, "node-1")

    def finished() -> Any:
        code, event = node.request("GET", "/tasks/node-1")
        return event if code == 200 and event.get("final") else None

    event = wait_until(finished, TIMEOUT, interval=0.05, message="GET /tasks/node-1 never reported the result")
    assert (event["state"], event["result"]) == ("succeeded", "HIHIHI")
    assert node.request("GET", "/tasks/never-submitted")[0] == 404


def test_node_unknown_task_and_bad_request(node: NodeService, worker: Worker) -> None:
    status, event = node.request("POST", "/tasks", {"task": "missing.task", "wait": True, "timeout": 10})
    expected = "dead" if worker.coordinator_online else "failed"  # see the unregistered-task test above
    assert (status, event["state"], event["error"]["type"]) == (200, expected, "UnknownTaskError")
    status, error = node.request("POST", "/tasks", {"task": "bad name!", "args": []})
    assert status == 400 and "task" in error["message"]


def test_node_over_mqtt311_on_the_embedded_broker(node_example: Path, amqtt_broker: Any, prefix: str) -> None:
    app = TaskApp(broker=amqtt_broker.url, prefix=prefix)

    @app.task
    def add(a: float, b: float) -> float:
        return a + b

    worker = Worker(app, concurrency=1, heartbeat_s=0.5, worker_id=f"conf-{prefix}").start()
    service = NodeService(amqtt_broker, prefix, MQTT_VERSION="4")
    try:
        status, event = service.request("POST", "/tasks", {"task": "add", "args": [20, 22], "wait": True})
        assert (status, event["state"], event["result"]) == (200, "succeeded", 42)
    finally:
        service.close()
        worker.stop(grace=5)
        app.close()


@pytest.mark.parametrize("body", [
    {"task": "add", "args": "2,3"},         # Fastify's default coercion made this ["2,3"]: a 202 and a task
    {"task": "add", "args": [2, 3], "wait": "yes"},
    {"task": "add", "args": [2, 3], "timeout": "5"},
    {"task": "add", "args": [2, 3], "max_attempts": "3"},
    {"task": "add", "kwargs": [1]},
])
def test_node_malformed_bodies_get_400_and_publish_nothing(node: NodeService, body: dict[str, Any]) -> None:
    status, error = node.request("POST", "/tasks", body)
    assert status == 400, (body, error)
    assert error.get("message")


def test_node_example_needs_no_newer_node_than_it_says() -> None:
    """Every pinned package runs on the Node.js version that package.json and README.md name."""
    package = json.loads((NODE_DIR / "package.json").read_text())
    claimed = int(package["engines"]["node"].lstrip(">=").split(".")[0])
    assert f"Node.js {claimed} or later" in (NODE_DIR / "README.md").read_text()
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    for name, entry in lock["packages"].items():
        needed = entry.get("engines", {}).get("node", "") if isinstance(entry.get("engines"), dict) else ""
        for bound in needed.replace(">= ", ">=").split():
            if bound.startswith(">="):
                assert int(bound[2:].split(".")[0]) <= claimed, f"{name or 'the example'} needs node {needed}"
