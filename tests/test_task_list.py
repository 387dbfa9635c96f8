"""The task list end to end: a real Mosquitto, a real coordinator with an SQLite store and a worker;
300 tasks over 2 queues and 3 task names, paged through the CLI and the HTTP API with filters. The
coordinator's payload cap is small, so that long pages are cut to fit and asked for again.

Every record is seen exactly once, in order, and the pages of each filter hold exactly the tasks
the task bodies wrote into the ledger for that queue and name (the ledger is the independent
count: the test does not trust the coordinator's own list to say what ran).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mqtt_tasks.app import TaskApp, TaskOptions
from mqtt_tasks.config import Settings
from mqtt_tasks.coordinator import Coordinator, query_task_page
from mqtt_tasks.errors import ConfigError
from mqtt_tasks.worker import Worker
from tests.brokers import MosquittoProcess, wait_until
from tests.chaos_tasks import test_policy
from tests.coord_helpers import HB, ROOT

QUEUES = ("mail", "media")
NAMES = ("list.send", "list.resize", "list.report")
TASKS = 300
SMALL_PAYLOAD = 16 * 1024
"""The coordinator's payload cap here: a page of 1,000 summaries is cut to about 50 to fit it, so a
``limit`` of 1,000 takes several answers too."""


def _app(url: str, prefix: str, ledger: Path) -> TaskApp:
    """Three task names; each body appends ``name queue id`` to the ledger (it is told its queue)."""
    app = TaskApp(settings=Settings.from_url(url, prefix=prefix))

    def body(name: str) -> Any:
        def run(ident: str, queue: str) -> str:
            fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{name} {queue} {ident}\n".encode())
            finally:
                os.close(fd)
            return ident
        return run

    for name in NAMES:
        app.task(name=name)(body(name))
    return app


def _ledger(path: Path) -> dict[str, tuple[str, str]]:
    """id -> (task name, queue), from what the bodies wrote; an id written twice fails the test."""
    seen: dict[str, tuple[str, str]] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        name, queue, ident = line.split()
        assert ident not in seen, f"{ident} ran twice"
        seen[ident] = (name, queue)
    return seen


@pytest.fixture
def recorded(mosquitto: MosquittoProcess, prefix: str, tmp_path: Path) -> Iterator[tuple[Settings, dict[str, Any]]]:
    """A coordinator that has recorded ``TASKS`` finished tasks, and the ledger of what ran."""
    ledger = tmp_path / "ledger"
    app = _app(mosquitto.url, prefix, ledger)
    settings = Settings.from_url(mosquitto.url, prefix=prefix)
    small = Settings.from_url(mosquitto.url, prefix=prefix, max_payload=SMALL_PAYLOAD)
    with Coordinator(small, str(tmp_path / "tasks.db"), policy=test_policy(HB)), \
            Worker(app, queues=list(QUEUES), concurrency=8, worker_id=f"w-{prefix}", heartbeat_s=HB, grace=2.0):
        for i in range(TASKS):
            queue = QUEUES[i % 2]
            app.send(NAMES[i % 3], [f"job-{i:03d}", queue], options=TaskOptions(queue=queue), task_id=f"job-{i:03d}")
        assert app.flush(30), "the broker did not take the tasks"
        wait_until(lambda: len(_ledger(ledger)) == TASKS, timeout=60, interval=0.2, message="the tasks did not run")
        wait_until(lambda: _done(settings) == TASKS, timeout=30, interval=0.3,
                   message="the coordinator did not record every task as succeeded")
        yield settings, {"ledger": _ledger(ledger), "url": mosquitto.url, "prefix": prefix}
    app.close()


def _done(settings: Settings) -> int:
    done, before = 0, None
    while True:
        page = query_task_page(settings, "succeeded", 1000, 5.0, before=before)
        done, before = done + len(page["tasks"]), page["next"]
        if before is None:
            return done


def _expected(ledger: dict[str, tuple[str, str]], queue: str | None, task: str | None) -> set[str]:
    return {i for i, (n, q) in ledger.items() if (queue is None or q == queue) and (task is None or n == task)}


def _api_pages(http: Any, limit: int, **where: str) -> list[list[dict[str, Any]]]:
    pages, before = [], None
    while True:
        response = http.get("/api/tasks", params={**where, "limit": limit, **({"before": before} if before else {})})
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["tasks"])
        if body["next"] is None:
            return pages
        before = body["next"]


def _in_order(records: list[dict[str, Any]]) -> bool:
    keys = [(r["updated"], r["id"]) for r in records]
    return keys == sorted(keys, reverse=True) and len(set(keys)) == len(keys)


FILTERS = ((None, None), ("mail", None), (None, "list.resize"), ("media", "list.report"))


def test_the_api_pages_each_filter_through_every_record_once(recorded: Any) -> None:
    pytest.importorskip("starlette")
    from mqtt_tasks.web import WebOptions
    from tests.web_helpers import client, dashboard_server

    settings, facts = recorded
    with dashboard_server(settings, WebOptions(query_timeout=10.0)) as base, client(base) as http:  # loaded CI
        for queue, task in FILTERS:
            where = {k: v for k, v in (("queue", queue), ("task", task), ("state", "succeeded")) if v}
            pages = _api_pages(http, 23, **where)
            records = list(itertools.chain.from_iterable(pages))
            assert sorted(r["id"] for r in records) == sorted(_expected(facts["ledger"], queue, task)), where
            assert _in_order(records) and all(len(p) == 23 for p in pages[:-1]), where
            assert all((r["task"], r["queue"]) == facts["ledger"][r["id"]] for r in records)
        bad = http.get("/api/tasks", params={"before": "bm90LWEtY3Vyc29y"})
        assert bad.status_code == 400 and "before: not a cursor" in bad.json()["error"]


def test_the_cli_pages_with_its_cursor_through_every_record_once(recorded: Any) -> None:
    """The real command, as a user runs it: each page prints the option that asks for the next."""
    settings, facts = recorded
    base = [sys.executable, "-m", "mqtt_tasks", "tasks", "--json", "--broker", facts["url"], "--prefix",
            facts["prefix"], "--queue", "mail", "--task", "list.send", "--limit", "20"]
    records: list[dict[str, Any]] = []
    extra: list[str] = []
    for _ in range(20):
        done = subprocess.run([*base, *extra], cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        records.extend(json.loads(done.stdout))
        if not done.stderr.strip():
            break
        (hint,) = done.stderr.strip().splitlines()
        assert hint.startswith("more: add --before ")
        extra = hint.removeprefix("more: add ").split()
    assert sorted(r["id"] for r in records) == sorted(_expected(facts["ledger"], "mail", "list.send"))
    assert _in_order(records) and len(records) == TASKS // 6
    _cli_limits_and_errors(settings, facts)


def _cli_limits_and_errors(settings: Settings, facts: dict[str, Any]) -> None:
    """More than a page's worth in one command (pages of 1,000 asked for in turn), and bad values."""
    from click.testing import CliRunner

    from mqtt_tasks.cli import RET_USAGE, cli

    common = ["--broker", facts["url"], "--prefix", facts["prefix"]]
    listed = CliRunner().invoke(cli, ["tasks", "--json", "--limit", "5000", *common], prog_name="mqtt-tasks")
    assert listed.exit_code == 0, listed.output
    assert sorted(r["id"] for r in json.loads(listed.stdout)) == sorted(facts["ledger"]) and not listed.stderr
    first = query_task_page(settings, None, 1000, 5.0)
    assert 10 < len(first["tasks"]) < 100 and first["next"]  # cut to the cap; the CLI above asked again
    for args in (["--before", "bm90LWEtY3Vyc29y"], ["--queue", "no/such"]):
        bad = CliRunner().invoke(cli, ["tasks", *args, *common], prog_name="mqtt-tasks")
        assert bad.exit_code == RET_USAGE and len(bad.stderr.strip().splitlines()) == 1
        assert "Traceback" not in bad.output
    with pytest.raises(ConfigError, match="state: one of"):  # the coordinator checks them too
        query_task_page(settings, "bogus", 10, 5.0)
