"""A dispatch its worker never got is sent again within a heartbeat or two, not at the dispatch timeout.

A leader killed between the commit of a dispatch and its publish leaves a record ``dispatched`` to a
worker's inbox whose message never left (the same after a single coordinator's ``kill -9``). The
coordinator that recovers it watches that worker's heartbeats: once one shows a free slot and an
empty line for a heartbeat interval since the dispatch, and does not list the task, it sends the
task again as the next attempt (``leases.dispatch_unseen``). Here the store is written as such a
leader left it, a real worker and a real coordinator run on Mosquitto, and the dispatch timeout is
30 s: only the heartbeats can explain a recovery within seconds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mqtt_tasks import leases
from mqtt_tasks.coordinator import query_status
from mqtt_tasks.store.sqlite import SQLiteStore
from tests.brokers import wait_until
from tests.chaos_tasks import make_app, test_policy
from tests.coord_helpers import HB, coordinator, executions, settings, worker

DISPATCH_TIMEOUT = 30.0


def _left_dispatched(db: str, task_id: str, worker_id: str) -> None:
    """The store as a leader killed right after committing the dispatch (and before sending it) left it."""
    policy = test_policy(HB, dispatch_timeout=DISPATCH_TIMEOUT)
    body = {"id": task_id, "task": "work", "args": [task_id], "queue": "default", "attempt": 1}
    now = time.time()
    record = leases.new_record(task_id, now, body=body)
    leases.on_task(record, body, now, policy)
    record.state = "backlog"
    leases.on_dispatched(record, worker_id, now, policy)
    store = SQLiteStore(db)
    store.put(record)
    store.commit()
    store.close()


def test_a_recovered_dispatch_the_worker_never_got_is_sent_again_within_seconds(mosquitto: Any, prefix: str,
                                                                                tmp_path: Path) -> None:
    log, db, url = str(tmp_path / "log"), str(tmp_path / "coordinator.db"), mosquitto.url
    _left_dispatched(db, "lost-1", "w1")
    with worker(url, prefix, "w1", log=log, concurrency=2):
        started = time.monotonic()
        with coordinator(url, prefix, db, policy=test_policy(HB, dispatch_timeout=DISPATCH_TIMEOUT)):
            wait_until(lambda: query_status(settings(url, prefix), "lost-1")["state"] == "succeeded", 15,
                       message="the dispatch nobody got was not sent again")
            took = time.monotonic() - started
            status = query_status(settings(url, prefix), "lost-1")
    print(f"sent again and done {took:.1f} s after the coordinator started (dispatch timeout {DISPATCH_TIMEOUT:g} s)")
    assert took < DISPATCH_TIMEOUT / 3
    assert (status["attempt"], status["failures"], status["losses"]) == (2, 0, 0)  # not a failure, not a suspect
    assert any("show room and do not list it" in (h.get("reason") or "") for h in status["history"])
    assert [kind for kind, _ in executions(log)["lost-1"]] == ["start", "end"]  # run once


def test_a_dispatch_the_worker_runs_is_never_sent_again(mosquitto: Any, prefix: str, tmp_path: Path) -> None:
    """The other side: a task the coordinator dispatched to a worker that then has a free slot is
    listed in its heartbeats while it runs, for many heartbeats, and runs once."""
    log, url = str(tmp_path / "log"), mosquitto.url
    with worker(url, prefix, "w1", log=log, concurrency=2), \
            coordinator(url, prefix, policy=test_policy(HB, dispatch_timeout=DISPATCH_TIMEOUT)) as c:
        wait_until(lambda: len(c.workers()) == 1, 10)
        app = make_app(url, prefix).connect()
        try:  # two fill the slots; the third is handed to the coordinator, which dispatches it later
            handles = [app.submit("work", f"long-{i}", seconds) for i, seconds in enumerate((0.5, 3.0, 3.0))]
            assert [h.result(30) for h in handles] == ["long-0", "long-1", "long-2"]
        finally:
            app.close()
        statuses = [query_status(settings(url, prefix), h.id) for h in handles]
    assert any(e.get("event") == "deferred" or e.get("event") == "dispatched" for s in statuses
               for e in s["history"]), [s["history"] for s in statuses]
    assert [s["attempt"] for s in statuses] == [1, 1, 1]
    assert all([kind for kind, _ in executions(log)[f"long-{i}"]] == ["start", "end"] for i in range(3))
