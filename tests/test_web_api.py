"""The HTTP API (docs/dashboard.md) against a real Mosquitto, coordinator and worker, over real sockets.

Every error case answers JSON with its status code: 400 malformed, 404 unknown id, 409 not in a
state for the action, 503 broker down or no coordinator, 401 without the token. Outcomes are
counted from the ledger the task bodies write (tests/chaos_tasks.py), not from the API itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")

from mqtt_tasks.web import WebOptions  # noqa: E402
from mqtt_tasks.web.openapi import openapi_document  # noqa: E402
from tests.brokers import MosquittoProcess  # noqa: E402
from tests.brokers import wait_until as _wait_until  # noqa: E402
from tests.coord_helpers import coordinator, executions, settings, worker  # noqa: E402
from tests.test_examples import ROOT, example_worker  # noqa: E402, F401  (a fixture)
from tests.web_helpers import FAST, client, dashboard_server  # noqa: E402


@pytest.fixture
def ledger(tmp_path: Path) -> str:
    return str(tmp_path / "ledger")


@pytest.fixture
def api(mosquitto: MosquittoProcess, prefix: str, ledger: str) -> Iterator[Any]:
    """An HTTP client of a dashboard server over a running coordinator and one worker."""
    with coordinator(mosquitto.url, prefix), worker(mosquitto.url, prefix, "w1", concurrency=2, log=ledger), \
            dashboard_server(settings(mosquitto.url, prefix)) as base, client(base) as http:
        yield http


def wait_until(predicate: Any, timeout: float, message: str) -> Any:
    return _wait_until(predicate, timeout=timeout, interval=0.1, message=message)  # each poll is a query


def _state(http: Any, task_id: str) -> str | None:
    response = http.get(f"/api/tasks/{task_id}")
    return response.json()["state"] if response.status_code == 200 else None


def test_submit_with_wait_answers_the_final_event(api: Any, ledger: str) -> None:
    response = api.post("/api/tasks?wait=15", json={"task": "work", "args": ["a1"], "id": "job-a1"})
    assert response.status_code == 200, response.text
    event = response.json()
    assert (event["id"], event["state"], event["result"]) == ("job-a1", "succeeded", "a1")
    assert [kind for kind, _ in executions(ledger)["a1"]] == ["start", "end"]


def test_submit_then_read_and_list(api: Any, ledger: str) -> None:
    response = api.post("/api/tasks", json={"task": "work", "args": ["b1"], "queue": "default", "priority": 7})
    assert response.status_code == 201, response.text
    task_id = response.json()["id"]
    wait_until(lambda: _state(api, task_id) == "succeeded", timeout=15, message="the task did not succeed")
    record = api.get(f"/api/tasks/{task_id}").json()
    assert record["result"] == "b1" and record["history"]
    listed = api.get("/api/tasks", params={"state": "succeeded", "queue": "default", "q": task_id[:8]}).json()["tasks"]
    assert [t["id"] for t in listed] == [task_id]
    assert api.get("/api/tasks", params={"queue": "nosuchqueue"}).json()["tasks"] == []
    assert "end" in [kind for kind, _ in executions(ledger)["b1"]]


def test_a_failing_task_waited_for_is_data_not_an_http_error(api: Any) -> None:
    response = api.post("/api/tasks?wait=15", json={"task": "boom"})
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "dead"
    assert "boom" in response.json()["error"]["message"]


def test_wait_that_runs_out_answers_202_with_the_id(api: Any, ledger: str) -> None:
    response = api.post("/api/tasks?wait=0.3", json={"task": "work", "args": ["slow", 3]})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["state"] == "pending"
    wait_until(lambda: _state(api, body["id"]) == "succeeded", timeout=15, message="the slow task did not end")


def test_cancel_a_waiting_task_then_cancel_again_and_retry(api: Any, ledger: str) -> None:
    task_id = api.post("/api/tasks", json={"task": "work", "args": ["c1"], "delay": 60}).json()["id"]
    wait_until(lambda: _state(api, task_id) == "scheduled", timeout=10, message="not held as scheduled")
    response = api.post(f"/api/tasks/{task_id}/cancel", json={"reason": "changed my mind"})
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "cancelled"
    assert api.post(f"/api/tasks/{task_id}/cancel").status_code == 200  # already cancelled: ok
    retried = api.post(f"/api/tasks/{task_id}/retry")
    assert retried.status_code == 200, retried.text
    assert retried.json()["task"]["attempt"] == 2
    assert _state(api, task_id) == "scheduled"  # a retry keeps its start time: held again until then
    assert "c1" not in executions(ledger)


def test_retry_a_dead_task(api: Any) -> None:
    task_id = api.post("/api/tasks?wait=15", json={"task": "boom"}).json()["id"]
    assert _state(api, task_id) == "dead"
    response = api.post(f"/api/tasks/{task_id}/retry")
    assert response.status_code == 200, response.text
    wait_until(lambda: api.get(f"/api/tasks/{task_id}").json()["attempt"] >= 4 and _state(api, task_id) == "dead",
               timeout=15, message="the retried task did not run its fresh attempts")


def test_actions_refused_by_state_are_409(api: Any) -> None:
    task_id = api.post("/api/tasks?wait=15", json={"task": "work", "args": ["d1"]}).json()["id"]
    for action in ("cancel", "retry"):
        response = api.post(f"/api/tasks/{task_id}/{action}")
        assert response.status_code == 409, response.text
        assert "succeeded" in response.json()["error"]


@pytest.mark.parametrize(("method", "path"), [("GET", "/api/tasks/nope-1"), ("POST", "/api/tasks/nope-1/cancel"),
                                              ("POST", "/api/tasks/nope-1/retry")])
def test_unknown_ids_are_404(api: Any, method: str, path: str) -> None:
    response = api.request(method, path)
    assert response.status_code == 404, response.text
    assert response.json()["status"] == 404 and "nope-1" in response.json()["error"]


@pytest.mark.parametrize(("body", "says"), [
    (b"{not json", "not JSON"),
    (b'{"task": "work", "args": [NaN]}', "NaN is not a JSON number"),
    (b"[1, 2]", "JSON object"),
    (b"{}", "task"),
    (b'{"task": "work", "args": {"a": 1}}', "args"),
    (b'{"task": "work", "kwargs": [1]}', "kwargs"),
    (b'{"task": "work", "id": "has space"}', "id"),
    (b'{"task": "work", "queue": "a/b"}', "queue"),
    (b'{"task": "work", "priority": 10}', "priority"),
    (b'{"task": "work", "delay": -1}', "delay"),
    (b'{"task": "work", "max_attempts": 0}', "max_attempts"),
    (b'{"task": "work", "colour": "red"}', "colour"),
    (b'{"task": "bad name!"}', "task"),
])
def test_malformed_submissions_are_400(api: Any, body: bytes, says: str) -> None:
    response = api.post("/api/tasks", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert says in response.json()["error"]


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/api/tasks?wait=abc"), ("POST", "/api/tasks?wait=-1"), ("GET", "/api/tasks?state=bogus"),
    ("GET", "/api/tasks?limit=0"), ("GET", "/api/tasks?limit=x"), ("GET", "/api/tasks/bad%20id"),
    ("POST", "/api/tasks/x1/cancel"),
])
def test_malformed_queries_are_400(api: Any, method: str, path: str) -> None:
    body = b'{"reason": 5}' if path.endswith("cancel") else b'{"task": "work"}'
    response = api.request(method, path, content=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]


def test_no_coordinator_is_503(mosquitto: MosquittoProcess, prefix: str) -> None:
    with dashboard_server(settings(mosquitto.url, prefix), WebOptions(query_timeout=0.5)) as base, \
            client(base) as http:
        for path in ("/api/tasks/x1", "/api/tasks", "/api/stats", "/api/schedules"):
            response = http.get(path)
            assert response.status_code == 503, (path, response.text)
            assert "no coordinator answered" in response.json()["error"]
        assert http.get("/api/workers").json() == {"workers": [], "connected": True}


def test_broker_down_is_503_and_the_server_keeps_serving(mosquitto: MosquittoProcess, prefix: str) -> None:
    with dashboard_server(settings(mosquitto.url, prefix)) as base, client(base) as http:
        assert http.get("/api/workers").status_code == 200
        mosquitto.stop()
        for method, path, body in (("GET", "/api/tasks", None), ("GET", "/api/tasks/x1", None),
                                   ("POST", "/api/tasks", {"task": "work"}), ("POST", "/api/tasks/x1/cancel", None),
                                   ("POST", "/api/tasks/x1/retry", None)):
            response = http.request(method, path, json=body)
            assert response.status_code == 503, (method, path, response.text)
            assert response.json()["status"] == 503
        assert http.get("/").status_code == 200
        assert http.get("/api/workers").json()["connected"] is False
        assert http.get("/metrics").status_code == 200  # a scrape never fails: coordinator_up says 0
        assert "mqtt_tasks_coordinator_up 0.0" in http.get("/metrics").text


def test_a_submit_the_broker_never_acknowledges_is_503(mosquitto: MosquittoProcess, prefix: str) -> None:
    options = WebOptions(ack_timeout=0.5)
    with dashboard_server(settings(mosquitto.url, prefix), options) as base, client(base) as http:
        assert http.post("/api/tasks", json={"task": "work"}).status_code == 201  # the producer is connected
        mosquitto.stop()
        response = http.post("/api/tasks", json={"task": "work"})
        assert response.status_code == 503, response.text
        assert "did not acknowledge" in response.json()["error"]


def test_token_is_required_when_configured(mosquitto: MosquittoProcess, prefix: str) -> None:
    options = WebOptions(token="s3cret", query_timeout=0.5)
    with dashboard_server(settings(mosquitto.url, prefix), options) as base:
        with client(base) as anonymous:
            for path in ("/", "/api/workers", "/metrics", "/api/openapi.json", "/static/app.js"):
                response = anonymous.get(path)
                assert response.status_code == 401, path
                assert "token" in response.json()["error"]
            assert anonymous.get("/api/workers", headers={"authorization": "Bearer wrong"}).status_code == 401
            opened = anonymous.get("/?token=s3cret")  # the browser's first visit sets the cookie
            assert opened.status_code == 200 and "mqtt_tasks_token" in opened.headers["set-cookie"]
            assert anonymous.get("/api/workers").status_code == 200  # the cookie, from now on
        with client(base, token="s3cret") as bearer:
            assert bearer.get("/api/workers").status_code == 200


def test_openapi_lists_every_route_with_its_methods(api: Any) -> None:
    document = api.get("/api/openapi.json").json()
    assert document == openapi_document(document["info"]["version"])
    served: dict[str, set[str]] = {}
    app = api.get("/api/openapi.json")  # the same server: read its routes from the app module
    assert app.status_code == 200
    from mqtt_tasks.config import Settings
    from mqtt_tasks.web import create_app

    for route in create_app(Settings(), FAST).routes:
        methods = {m.lower() for m in getattr(route, "methods", None) or ()} - {"head"}
        if route.path not in ("/", "/static") and methods:
            served.setdefault(route.path, set()).update(methods)
    documented = {path: set(ops) for path, ops in document["paths"].items()}
    assert served == documented


@pytest.mark.usefixtures("example_worker")
def test_the_http_example_prints_the_result(mosquitto: MosquittoProcess) -> None:
    """examples/http/submit.py, as examples/README.md says, against the example worker."""
    import subprocess
    import sys

    from mqtt_tasks.config import Settings

    with dashboard_server(Settings.from_url(mosquitto.url)) as base:
        ok = subprocess.run([sys.executable, "examples/http/submit.py", base, "add", "2", "3"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
        failed = subprocess.run([sys.executable, "examples/http/submit.py", base, "divide", "1", "0"], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
    assert (ok.returncode, ok.stdout.strip()) == (0, "5"), ok.stderr
    assert failed.returncode == 1 and "division by zero" in failed.stderr


def test_schedules_and_stats_are_the_coordinators(api: Any, mosquitto: MosquittoProcess, prefix: str) -> None:
    from mqtt_tasks.schedules import put_schedule

    put_schedule(settings(mosquitto.url, prefix), {"name": "nightly", "task": "work", "args": ["n"],
                                                   "cron": "30 2 * * *", "timezone": "Europe/Berlin"})
    schedules = api.get("/api/schedules").json()["schedules"]
    assert [(s["name"], s["cron"], s["timezone"]) for s in schedules] == [("nightly", "30 2 * * *", "Europe/Berlin")]
    stats = api.get("/api/stats").json()
    assert stats["ok"] is True and stats["backlog_by_queue"] == {} and "w1" in stats["workers"]
    assert "correlation" not in stats


def test_a_task_over_the_payload_cap_is_413(api: Any) -> None:
    response = api.post("/api/tasks", json={"task": "work", "args": ["x" * 300_000]})
    assert response.status_code == 413, response.text
    assert "bytes" in response.json()["error"]


def test_actions_from_another_sites_page_are_403(api: Any) -> None:
    for path in ("/api/tasks", "/api/tasks/x1/cancel", "/api/tasks/x1/retry"):
        response = api.post(path, json={"task": "work"}, headers={"origin": "http://evil.example"})
        assert response.status_code == 403, (path, response.text)
    same = api.post("/api/tasks", json={"task": "work", "args": ["o1"]},
                    headers={"origin": str(api.base_url).rstrip("/")})
    assert same.status_code == 201, same.text
    assert api.get("/api/workers", headers={"origin": "http://evil.example"}).status_code == 200  # reads: CORS
