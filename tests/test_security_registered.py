"""Only registered tasks run: nothing in a payload can import a module, name a Python object, or
reach eval / pickle."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest

from mqtt_tasks.protocol.topics import Topics
from tests.brokers import wait_until
from tests.sources import PACKAGE, package_trees
from tests.test_fuzz import PREFIX, Harness

CALLED: list[str] = []


def canary(*args: Any) -> None:  # what a payload naming "tests.test_security_registered.canary" would reach
    CALLED.append("canary")


HOSTILE_NAMES = ["os.system", "__import__", "builtins.eval", "builtins.exec", "subprocess.run", "eval",
                 "pickle.loads", "marshal.loads", "importlib.import_module", "tests.test_security_registered.canary",
                 "mqtt_tasks.worker.Worker", "echo.__globals__", "echo.__code__", "__builtins__", "getattr",
                 "os:system", "os/system", "echo; import os", "__main__.echo", "ECHO", "echo "]
HOSTILE_ARGS = [{"__reduce__": ["os.system", ["id"]]}, {"py/object": "os.system"}, {"$type": "System.IO.File"},
                "!!python/object/apply:os.system [id]", "__import__('os').system('id')",
                {"__class__": {"__init__": {"__globals__": "x"}}}, "gASVBAAAAAAAAACMAm9zlC4="]  # a pickle, base64


@pytest.fixture(scope="module")
def harness() -> Any:
    h = Harness()
    yield h
    h.close()


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_unregistered_names_never_run(harness: Harness, name: str) -> None:
    ran_before = len(harness.ran)
    out = harness.feed(Topics(PREFIX).tasks("default"), json.dumps({"id": "h1", "task": name, "args": ["id"]}).encode())
    events = [json.loads(p) for _, p in out]
    assert len(harness.ran) == ran_before and CALLED == []
    # Either refused as malformed (a report on P/errors), or failed as an unknown task.
    assert any(e.get("reason") for e in events) or \
        any(e.get("state") == "failed" and e["error"]["type"] == "UnknownTaskError" for e in events), events


@pytest.mark.parametrize("arg", HOSTILE_ARGS)
def test_arguments_arrive_as_plain_json_values(harness: Harness, arg: Any) -> None:
    out = harness.feed(Topics(PREFIX).tasks("default"),
                       json.dumps({"id": "h2", "task": "echo", "args": [arg], "kwargs": {"k": arg}}).encode())
    (done,) = [json.loads(p) for _, p in out if json.loads(p).get("state") == "succeeded"]
    assert done["result"] == [[arg], {"k": arg}]  # passed through as data, unchanged
    assert harness.ran[-1] == ((arg,), {"k": arg})


def _source_trees() -> list[tuple[Path, ast.Module]]:
    return sorted(package_trees().items())


FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "jsonpickle", "yaml"}
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}
# Importing by name is for the operator's command line (`mqtt-worker module:app`), never a payload.
IMPORT_BY_NAME_ALLOWED = {"cli.py", "supervisor.py", "demo.py", "__main__.py"}
# Running code that arrived as a message: one place, the worker's part for signed bundles, which
# runs a bundle's source only after its Ed25519 signature and SHA-256 verified and only with
# --accept-deploys (docs/security.md, "Deploying code"; tests/test_deploy.py proves that a bundle
# that does not verify never runs).
EXEC_ALLOWED = {("worker", "deploys.py"): {"exec", "compile"}}


def test_the_package_never_imports_pickle_or_calls_eval() -> None:
    for path, tree in _source_trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]}
            else:
                names = set()
            assert not names & FORBIDDEN_MODULES, f"{path.name}:{getattr(node, 'lineno', '?')} imports {names}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                allowed = EXEC_ALLOWED.get((path.parent.name, path.name), set())
                assert node.func.id not in FORBIDDEN_CALLS - allowed, f"{path.name}:{node.lineno} calls {node.func.id}"
            if "importlib" in names or (isinstance(node, ast.Attribute) and node.attr == "import_module"):
                assert path.name in IMPORT_BY_NAME_ALLOWED, f"{path.name}:{node.lineno} imports by name"


def test_the_worker_looks_tasks_up_in_the_registry_only() -> None:
    """The worker turns a task name into code in one place: a lookup in the app's registry."""
    modules = sorted((PACKAGE / "worker").glob("*.py"))
    assert modules, "the worker package moved"
    for path in modules:
        tree = package_trees()[path]
        lookups = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                   and n.func.id in {"getattr", "globals", "locals", "vars"}]
        assert lookups == [], f"{path.name}: the worker must not resolve names dynamically"


@pytest.mark.parametrize("reply_to", [f"{PREFIX}/tasks/default", f"{PREFIX}/workers/other", f"{PREFIX}/dead/default",
                                      f"{PREFIX}/coordinator"])
def test_worker_never_replies_onto_protocol_topics(harness: Harness, reply_to: str) -> None:
    out = harness.feed(Topics(PREFIX).tasks("default"),
                       json.dumps({"id": "r1", "task": "echo", "args": [1], "reply_to": reply_to}).encode())
    errors = Topics(PREFIX).errors
    start = len(harness.conn.published) - len(out)
    wait_until(lambda: any(t == errors for t, _ in harness.conn.since(start)))  # the reply follows the status
    later = harness.conn.since(start)
    assert reply_to not in [t for t, _ in later]
    reports = [json.loads(p) for t, p in later if t == errors]
    assert len(reports) == 1 and "refusing to reply" in reports[0]["reason"]


def test_worker_replies_on_reply_topics_and_foreign_topics(harness: Harness) -> None:
    for reply_to in (f"{PREFIX}/replies/p1", "my/replies"):
        out = harness.feed(Topics(PREFIX).tasks("default"),
                           json.dumps({"id": "r2", "task": "echo", "args": [1], "reply_to": reply_to}).encode())
        wait_until(lambda r=reply_to: r in [t for t, _ in harness.conn.published])
        assert not [t for t, _ in out if t == Topics(PREFIX).errors]


def test_a_huge_timeout_does_not_disable_time_limits() -> None:
    """Found by bench/fuzz_long.py: {"timeout": 1e300} crashed the time-limit thread."""
    import threading

    crashed: list[BaseException] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: crashed.append(args.exc_value)  # type: ignore[assignment,return-value]
    h = Harness()

    @h.app.task
    def nap(seconds: float) -> str:
        import time

        time.sleep(seconds)
        return "woke"

    try:
        for timeout in (1e300, 1e12):
            out = h.feed(Topics(PREFIX).tasks("default"),
                         json.dumps({"id": "huge", "task": "echo", "timeout": timeout}).encode())
            assert any(json.loads(p).get("state") == "succeeded" for _, p in out)
        out = h.feed(Topics(PREFIX).tasks("default"),
                     json.dumps({"id": "limited", "task": "nap", "args": [1], "timeout": 0.2}).encode())
        (final,) = [json.loads(p) for _, p in out if json.loads(p).get("state") == "failed"]
        assert final["error"]["type"] == "TaskTimeLimitExceeded" and crashed == []
    finally:
        threading.excepthook = previous
        h.close()
