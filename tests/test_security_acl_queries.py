"""With ACLs on, every role asks the coordinator what it is allowed to know, and no more
(docs/security.md "Users, roles and topic ACLs", protocol/rpc.py).

Against a real Mosquitto with the generated password and ACL files (the ``secured`` fixture of
tests/test_security_acl.py), a real coordinator process, the CLI as subprocesses, and the
dashboard server on a real socket. What ran is counted from the ledger the task bodies write
(tests/chaos_tasks.py), not from the coordinator's answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from mqtt_tasks import TaskApp
from mqtt_tasks.cli import RET_CONNECT
from mqtt_tasks.coordinator import query_stats, query_status
from mqtt_tasks.coordinator.queries import exchange
from mqtt_tasks.protocol.topics import Topics
from tests.brokers import MosquittoProcess, wait_until
from tests.coord_helpers import ROOT, executions, spawn_coordinator, worker
from tests.test_security_acl import password_of, secured, settings_for  # noqa: F401  (a fixture)

A_IDS = ["a0", "a1", "a2"]  # queue default: a producer's purge must leave them be
B_IDS = ["b0", "b1", "b2"]  # queue other: the operator purges them


def url_of(broker: MosquittoProcess, user: str) -> str:
    return f"mqtt://{user}:{password_of(user)}@127.0.0.1:{broker.port}"


def cli_as(broker: MosquittoProcess, user: str, prefix: str, *args: str,
           query: str = "") -> subprocess.CompletedProcess[str]:
    """``mqtt-tasks ARGS`` as a subprocess with ``user``'s credentials (``query``: of the broker URL)."""
    argv = [sys.executable, "-m", "mqtt_tasks", *args, "--broker", url_of(broker, user) + query, "--prefix", prefix]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT})


@contextmanager
def coordinator_process(broker: MosquittoProcess, prefix: str, db: Path) -> Iterator[None]:
    proc = spawn_coordinator(url_of(broker, "c1"), prefix, str(db))
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(30)


def state_of(broker: MosquittoProcess, user: str, prefix: str, task_id: str) -> str:
    return str(query_status(settings_for(broker, user, prefix=prefix), task_id, timeout=10)["state"])


def submit_waiting_tasks(broker: MosquittoProcess, prefix: str) -> None:
    """Producer p1 submits delayed tasks with no worker up: the coordinator holds them in its backlog."""
    app = TaskApp(settings=settings_for(broker, "p1", prefix=prefix), client_id="p1")

    @app.task(name="work")
    def work(ident: str) -> str:  # runs on the worker, from tests/chaos_tasks.py
        return ident

    with app:
        for ident in A_IDS:
            work.submit_with([ident], task_id=ident, queue="default", delay=0.2)
        for ident in B_IDS:
            work.submit_with([ident], task_id=ident, queue="other", delay=0.2)
        assert app.flush(10)
        wait_until(lambda: all(state_of(broker, "p1", prefix, i) == "backlog" for i in A_IDS + B_IDS), 30,
                   interval=0.2, message="the tasks never reached the coordinator's backlog")


def test_producer_and_monitor_query_a_producer_cannot_purge_an_operator_can(
        secured: MosquittoProcess, prefix: str, tmp_path: Path) -> None:  # noqa: F811
    ledger = str(tmp_path / "ledger")
    with coordinator_process(secured, prefix, tmp_path / "c.db"):
        submit_waiting_tasks(secured, prefix)  # p1 read each state back: its queries work (library)
        status = cli_as(secured, "p1", prefix, "status", "a0")
        assert status.returncode == 0, status.stderr
        assert '"state": "backlog"' in status.stdout and '"id": "a0"' in status.stdout
        listed = cli_as(secured, "m1", prefix, "tasks", "--json")
        assert listed.returncode == 0, listed.stderr
        assert {"a0", "b2"} <= {t["id"] for t in json.loads(listed.stdout)}
        assert query_stats(settings_for(secured, "m1", prefix=prefix), timeout=10)["backlog"] == 6
        stats = cli_as(secured, "m1", prefix, "stats")  # the monitor's mqtt-tasks stats, readable and JSON
        assert stats.returncode == 0 and "backlog:  6 (3 default, 3 other)" in stats.stdout, stats
        stats_json = cli_as(secured, "m1", prefix, "stats", "--json")
        assert stats_json.returncode == 0 and json.loads(stats_json.stdout)["counts"] == {"backlog": 6}, stats_json

        assert_producer_cannot_purge(secured, prefix)
        purged = cli_as(secured, "o1", prefix, "purge", "other")
        assert purged.returncode == 0 and "purged 3 task(s) from queue other" in purged.stdout, purged
        retried = cli_as(secured, "o1", prefix, "retry", "b0")
        assert retried.returncode == 0 and "will run again as attempt" in retried.stdout, retried

        with worker(url_of(secured, "w1"), prefix, "w1", log=ledger, queues=["default", "other"]):
            wait_until(lambda: {"a0", "a1", "a2", "b0"} <= set(executions(ledger)), 60,
                       message=f"the queue did not run: {executions(ledger)}")
            for ident in ("a0", "a1", "a2", "b0"):
                wait_until(lambda i=ident: state_of(secured, "o1", prefix, i) == "succeeded", 30)  # type: ignore[misc]
            assert state_of(secured, "m1", prefix, "b1") == state_of(secured, "m1", prefix, "b2") == "cancelled"
    ran = executions(ledger)
    assert sorted(ran) == ["a0", "a1", "a2", "b0"], ran  # b1, b2 were purged (final: they never run)
    assert all([kind for kind, _ in ran[i]] == ["start", "end"] for i in ran), ran  # each ran once


def assert_producer_cannot_purge(broker: MosquittoProcess, prefix: str) -> None:
    """The broker refuses p1's purge on P/rpc/coordinator (MQTT 5: at once, "Not authorized";
    3.1.1: silently, so no answer comes); on the read-only topic the coordinator refuses it, naming
    the operator's topic; on the deployer's topic too."""
    denied = cli_as(broker, "p1", prefix, "purge", "default", "--timeout", "20")
    assert denied.returncode == RET_CONNECT, denied
    assert denied.stderr.strip() == (f"Error: the broker refused the request on {prefix}/rpc/coordinator "
                                     "(Not authorized): the ACL of user 'p1' does not allow it (docs/security.md)")
    old = cli_as(broker, "p1", prefix, "purge", "default", "--timeout", "2", query="?protocol=3.1.1")
    assert old.returncode == RET_CONNECT and "no coordinator answered" in old.stderr, old
    t = Topics(prefix)
    for user, topic in (("p1", t.rpc_query), ("m1", t.rpc_query), ("d1", t.rpc_deploy)):
        answer = ask_raw(broker, user, prefix, topic, {"op": "purge", "queue": "default"})
        assert answer["ok"] is False and t.rpc in answer["error"], (user, answer)
    assert all(state_of(broker, "p1", prefix, i) == "backlog" for i in A_IDS)


def ask_raw(broker: MosquittoProcess, user: str, prefix: str, topic: str, request: dict[str, Any]) -> dict[str, Any]:
    answer = exchange(settings_for(broker, user, prefix=prefix), topic,
                      lambda reply_to, correlation: {**request, "reply_to": reply_to, "correlation": correlation},
                      10.0)
    assert answer is not None, f"{user}: no answer on {topic}"
    return answer


def test_the_dashboard_serves_its_api_through_the_dashboard_role(
        secured: MosquittoProcess, prefix: str, tmp_path: Path) -> None:  # noqa: F811
    pytest.importorskip("starlette")
    from tests.web_helpers import client, dashboard_server

    ledger = str(tmp_path / "ledger")
    with coordinator_process(secured, prefix, tmp_path / "c.db"), \
            worker(url_of(secured, "w1"), prefix, "w1", log=ledger), \
            dashboard_server(settings_for(secured, "dash1", prefix=prefix)) as base, client(base) as http:
        done = http.post("/api/tasks?wait=20", json={"task": "work", "args": ["web1"], "id": "web1"})
        assert done.status_code == 200 and done.json()["result"] == "web1", done.text  # submit, its reply
        record = http.get("/api/tasks/web1")
        assert record.status_code == 200 and record.json()["state"] == "succeeded", record.text
        stats = http.get("/api/stats")
        assert stats.status_code == 200 and "w1" in stats.json()["workers"], stats.text
        wait_until(lambda: [w["worker"] for w in http.get("/api/workers").json()["workers"]] == ["w1"], 20)
        waiting = http.post("/api/tasks", json={"task": "work", "args": ["web2"], "id": "web2", "delay": 600})
        assert waiting.status_code == 201, waiting.text
        wait_until(lambda: http.get("/api/tasks/web2").status_code == 200, 20)
        cancelled = http.post("/api/tasks/web2/cancel")  # P/cancel/web2, answered under P/replies/dash1/
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled", cancelled.text
        dead = http.post("/api/tasks?wait=20", json={"task": "boom", "id": "boom1"})  # max_attempts 2
        assert dead.status_code == 200 and dead.json()["state"] == "dead", dead.text
        retried = http.post("/api/tasks/boom1/retry")  # the operator's topic, P/rpc/coordinator
        assert retried.status_code == 200 and retried.json()["task"]["attempt"] == 3, retried.text
        wait_until(lambda: http.get("/api/tasks/boom1").json()["attempt"] >= 4, 30, message="no fresh attempts")
    assert sorted(executions(ledger)) == ["web1"] and len(executions(ledger)["web1"]) == 2  # start, end
