"""A cancelled task that an operator retries runs again, once (worker/cancel.py: a cancel covers the
attempts it was made about; docs/scheduling.md "Cancelling a task").

Real Mosquitto, a real coordinator process and two real worker processes (tests/chaos_tasks.py),
both reading every cancel request; the CLI in-process through click's CliRunner (real sockets) and
the dashboard's retry through its HTTP API. What ran is counted from the ledger the task bodies
write, not from the coordinator's answers.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from click.testing import CliRunner

from mqtt_tasks import TaskApp
from mqtt_tasks.cli import cli
from mqtt_tasks.coordinator import query_status
from tests.brokers import MosquittoProcess, wait_until
from tests.chaos_tasks import gate
from tests.coord_helpers import executions, settings, spawn_coordinator, spawn_worker


@contextmanager
def fleet(url: str, prefix: str, db: Path, ledger: str) -> Iterator[None]:
    """A coordinator process and two worker processes (concurrency 2), stopped with SIGTERM."""
    procs: list[subprocess.Popen[str]] = []
    with ExitStack() as stack:
        stack.callback(_stop_all, procs)
        procs.append(spawn_coordinator(url, prefix, str(db)))
        procs += [spawn_worker(url, prefix, w, 2, ledger) for w in ("w1", "w2")]
        wait_until(lambda: len(_workers(url, prefix)) == 2, 30, interval=0.2, message="the workers never showed up")
        yield


def _stop_all(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(30)


def _workers(url: str, prefix: str) -> dict[str, object]:
    from mqtt_tasks.coordinator import query_stats

    workers: dict[str, object] = query_stats(settings(url, prefix), timeout=10)["workers"]
    return workers


def record(url: str, prefix: str, task_id: str) -> dict[str, object]:
    return query_status(settings(url, prefix), task_id, timeout=10)


def state(url: str, prefix: str, task_id: str) -> object:
    return record(url, prefix, task_id)["state"]


def run_cli(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, (args, result.output)
    return result.output


def kinds(ledger: str, ident: str) -> list[str]:
    return [kind for kind, _ in executions(ledger).get(ident, [])]


def test_a_running_task_cancelled_then_retried_runs_to_success_once(
        mosquitto: MosquittoProcess, prefix: str, tmp_path: Path) -> None:
    url, ledger = mosquitto.url, str(tmp_path / "ledger")
    broker = ["--broker", url, "--prefix", prefix]
    with fleet(url, prefix, tmp_path / "c.db", ledger), TaskApp(settings=settings(url, prefix)) as app:
        app.send("gated", ["r1"], task_id="r1")
        wait_until(lambda: kinds(ledger, "r1") == ["start"], 30, message="r1 never started")
        assert "r1 cancelled" in run_cli("cancel", "r1", *broker)  # P/cancel/r1: both workers read it
        wait_until(lambda: kinds(ledger, "r1") == ["start", "cancelled"], 20, message="its body was not stopped")
        Path(gate(ledger, "r1")).touch()  # the retry's body ends at once
        assert "will run again as attempt 2" in run_cli("retry", "r1", *broker)
        wait_until(lambda: state(url, prefix, "r1") == "succeeded", 30,
                   message=f"the retried task did not run: {record(url, prefix, 'r1')}")
        assert record(url, prefix, "r1")["attempt"] == 2
    assert kinds(ledger, "r1") == ["start", "cancelled", "start", "end"]  # stopped once, then ran once to its end


def test_a_waiting_task_cancelled_then_retried_runs_once(
        mosquitto: MosquittoProcess, prefix: str, tmp_path: Path) -> None:
    """Cancelled while every slot of the fleet was taken, so that no worker ran it (it waited in
    the coordinator's backlog or a worker's line); every worker remembers the cancel by id. The
    operator's retry is a newer attempt and runs, once."""
    url, ledger = mosquitto.url, str(tmp_path / "ledger")
    broker = ["--broker", url, "--prefix", prefix]
    busy = [f"g{i}" for i in range(4)]  # two workers with two slots each
    with fleet(url, prefix, tmp_path / "c.db", ledger), TaskApp(settings=settings(url, prefix)) as app:
        for ident in busy:
            app.send("gated", [ident], task_id=ident)
        wait_until(lambda: all(kinds(ledger, i) == ["start"] for i in busy), 30, message="the fleet never filled")
        app.send("gated", ["q1"], task_id="q1")
        wait_until(lambda: _known(url, prefix, "q1"), 20, message="the coordinator never recorded q1")
        assert "q1 cancelled" in run_cli("cancel", "q1", *broker)
        for ident in [*busy, "q1"]:
            Path(gate(ledger, ident)).touch()
        wait_until(lambda: all(state(url, prefix, i) == "succeeded" for i in busy), 30)
        assert kinds(ledger, "q1") == [] and state(url, prefix, "q1") == "cancelled"
        assert "will run again as attempt 2" in run_cli("retry", "q1", *broker)
        wait_until(lambda: state(url, prefix, "q1") == "succeeded", 30,
                   message=f"the retried task did not run: {record(url, prefix, 'q1')}")
    assert kinds(ledger, "q1") == ["start", "end"]
    assert all(kinds(ledger, i) == ["start", "end"] for i in busy)


def test_the_dashboards_retry_of_a_cancelled_task_runs_it(
        mosquitto: MosquittoProcess, prefix: str, tmp_path: Path) -> None:
    from tests.web_helpers import client, dashboard_server

    url, ledger = mosquitto.url, str(tmp_path / "ledger")
    with fleet(url, prefix, tmp_path / "c.db", ledger), dashboard_server(settings(url, prefix)) as base, \
            client(base) as http:
        submitted = http.post("/api/tasks", json={"task": "gated", "args": ["d1"], "id": "d1"})
        assert submitted.status_code == 201, submitted.text
        wait_until(lambda: kinds(ledger, "d1") == ["start"], 30, message="d1 never started")
        cancelled = http.post("/api/tasks/d1/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled", cancelled.text
        wait_until(lambda: kinds(ledger, "d1") == ["start", "cancelled"], 20, message="its body was not stopped")
        Path(gate(ledger, "d1")).touch()
        retried = http.post("/api/tasks/d1/retry")
        assert retried.status_code == 200 and retried.json()["task"]["attempt"] == 2, retried.text
        wait_until(lambda: http.get("/api/tasks/d1").json()["state"] == "succeeded", 30,
                   message="the dashboard's retry did not run")
    assert kinds(ledger, "d1") == ["start", "cancelled", "start", "end"]


def _known(url: str, prefix: str, task_id: str) -> bool:
    from mqtt_tasks.errors import TaskNotFoundError

    try:
        record(url, prefix, task_id)
    except TaskNotFoundError:
        return False
    return True
