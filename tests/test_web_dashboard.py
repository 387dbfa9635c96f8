"""The dashboard end to end in a real headless browser (Debian's chromium driven by Playwright).

A real Mosquitto, coordinator and worker, the dashboard server on a real socket, the page's own
JavaScript: a worker appears, a task submitted through the form finishes, a waiting task is
cancelled and a dead one retried with the page's buttons. Outcomes are checked through the API
and the task ledger, not only on the page. ``MQTT_TASKS_SCREENSHOT=1`` also writes
docs/dashboard.png (the README's screenshot).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
sync_api = pytest.importorskip("playwright.sync_api")

from mqtt_tasks.web import WebOptions, create_app  # noqa: E402
from tests.brokers import MosquittoProcess, wait_until  # noqa: E402
from tests.coord_helpers import coordinator, executions, settings, worker  # noqa: E402
from tests.web_helpers import client, dashboard_server  # noqa: E402

CHROMIUM = os.environ.get("MQTT_TASKS_CHROMIUM", "/usr/bin/chromium")
REQUIRE_ENV = "MQTT_TASKS_REQUIRE_CHROMIUM"
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "dashboard.png"
UI_TIMEOUT_MS = 15_000


@pytest.fixture
def page() -> Iterator[Any]:
    if not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM):
        reason = f"no chromium at {CHROMIUM} (Debian: apt-get install chromium)"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason}; required because {REQUIRE_ENV}=1", pytrace=False)
        pytest.skip(reason)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 1250})
            tab.set_default_timeout(UI_TIMEOUT_MS)
            errors: list[str] = []
            tab.on("pageerror", lambda exc: errors.append(str(exc)))
            yield tab
            assert errors == [], f"JavaScript errors on the page: {errors}"
        finally:
            browser.close()


def _row(page: Any, table: str, task_id: str) -> Any:
    return page.locator(f'[data-testid="{table}"] tr[data-task="{task_id}"]')


def test_dashboard_end_to_end(page: Any, mosquitto: MosquittoProcess, prefix: str, tmp_path: Path) -> None:
    ledger = str(tmp_path / "ledger")
    expect = sync_api.expect
    with coordinator(mosquitto.url, prefix), dashboard_server(settings(mosquitto.url, prefix)) as base, \
            client(base) as http:
        page.goto(base)
        expect(page.get_by_test_id("link")).to_have_text("broker connected")
        expect(page.get_by_test_id("coordinator")).to_have_text("coordinator online")
        expect(page.get_by_test_id("n-workers")).to_have_text("0")
        with worker(mosquitto.url, prefix, "w-e2e", concurrency=4, log=ledger):
            # a worker appears, live (no reload)
            expect(page.locator('tr[data-worker="w-e2e"] td').nth(1)).to_have_text("online")
            expect(page.get_by_test_id("n-workers")).to_have_text("1")

            # a task submitted through the form finishes; its detail shows the result
            form = page.get_by_test_id("submit")
            form.locator('input[name="task"]').fill("work")
            form.locator('input[name="args"]').fill('["e2e-1"]')
            form.get_by_role("button", name="Submit").click()
            expect(page.get_by_test_id("submit-out")).to_contain_text("submitted ")
            task_id = page.get_by_test_id("submit-out").inner_text().split()[-1]
            expect(_row(page, "tasks", task_id).get_by_test_id("state")).to_have_text("succeeded")
            expect(page.get_by_test_id("result")).to_have_text('"e2e-1"')
            assert [kind for kind, _ in executions(ledger)["e2e-1"]] == ["start", "end"]

            # a waiting task is cancelled with its button
            waiting = http.post("/api/tasks", json={"task": "work", "args": ["e2e-never"], "delay": 60}).json()["id"]
            _row(page, "tasks", waiting).get_by_role("button", name="cancel").click()
            expect(_row(page, "tasks", waiting).get_by_test_id("state")).to_have_text("cancelled")
            assert http.get(f"/api/tasks/{waiting}").json()["state"] == "cancelled"

            # a dead task is retried from the dead letters
            dead = http.post("/api/tasks?wait=15", json={"task": "boom"}).json()
            assert dead["state"] == "dead"
            _row(page, "dead", dead["id"]).get_by_role("button", name="retry").click()
            wait_until(lambda: http.get(f"/api/tasks/{dead['id']}").json()["attempt"] > dead["attempt"],
                       timeout=15, interval=0.1, message="the retry did not run a new attempt")
            _row(page, "tasks", dead["id"]).locator("td").first.click()  # its record: the error and traceback
            expect(page.get_by_test_id("detail")).to_contain_text("RuntimeError: boom")
            expect(page.get_by_test_id("detail")).to_contain_text("Traceback")

            # the plots have points; the events list shows the ends
            _fill_the_plots(http)
            page.wait_for_function("() => live && live.series.some(p => p.succeeded > 0)")
            expect(page.get_by_test_id("events")).to_contain_text("succeeded")
            expect(page.locator('tr[data-queue="default"] td').nth(5)).not_to_have_text("0")  # succeeded, 1 min
            page.wait_for_function("() => document.querySelectorAll('#tasks tr').length >= 15 && "
                                   "live.workers.every(w => (w.tasks || []).length === 0)")
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            if os.environ.get("MQTT_TASKS_SCREENSHOT") == "1":
                page.screenshot(path=str(SCREENSHOT), full_page=False)
    assert "e2e-never" not in executions(ledger)


def _fill_the_plots(http: Any) -> None:
    for i in range(12):
        http.post("/api/tasks", json={"task": "work", "args": [f"fill-{i}", 0.05 * (i % 4)]})
    wait_until(lambda: len(http.get("/api/tasks", params={"state": "succeeded"}).json()["tasks"]) >= 13,
               timeout=15, interval=0.2, message="the filler tasks did not finish")


def test_dashboard_mounted_in_a_users_app_with_a_token(page: Any, mosquitto: MosquittoProcess, prefix: str) -> None:
    """Mounted under /ops of a user's Starlette app, behind a token: the page still finds its API."""
    import threading
    from contextlib import asynccontextmanager

    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    from mqtt_tasks.web import close_app
    from tests.brokers import free_port

    dashboard = create_app(settings(mosquitto.url, prefix), WebOptions(token="t0ken", query_timeout=2.0))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:  # as docs/dashboard.md shows
        yield
        close_app(dashboard)

    app = Starlette(routes=[Route("/", lambda request: PlainTextResponse("the user's own app")),
                            Mount("/ops", app=dashboard)], lifespan=lifespan)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, name="test-mounted", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=10, message="the user's app did not start")
        with coordinator(mosquitto.url, prefix), worker(mosquitto.url, prefix, "w-mounted"):
            page.goto(f"http://127.0.0.1:{port}/ops/?token=t0ken")
            sync_api.expect(page.locator('tr[data-worker="w-mounted"] td').nth(1)).to_have_text("online")
            sync_api.expect(page.get_by_test_id("coordinator")).to_have_text("coordinator online")
            assert page.request.get(f"http://127.0.0.1:{port}/").text() == "the user's own app"
    finally:
        server.should_exit = True
        thread.join(10)


def test_the_task_list_filters_by_queue_and_task_name_and_pages_older(page: Any, mosquitto: MosquittoProcess,
                                                                       prefix: str) -> None:
    """24 delayed tasks (they stay put while the page is read) over 2 queues and 3 task names: the
    queue filter shows only its queue, 10 to a page; "older" shows the rest, "newer" goes back; the
    task-name filter narrows it further. Every expected id is on exactly one page."""
    expect = sync_api.expect
    with coordinator(mosquitto.url, prefix), dashboard_server(settings(mosquitto.url, prefix)) as base, \
            client(base) as http:
        ids = {}
        for i in range(24):
            task_id = f"page-{i:02d}"
            body = {"task": ("a.send", "b.resize", "c.report")[i % 3], "queue": ("q1", "q2")[i % 2], "delay": 600,
                    "id": task_id}
            assert http.post("/api/tasks", json=body).status_code == 201
            ids[task_id] = (body["task"], body["queue"])
        wait_until(lambda: len(http.get("/api/tasks", params={"state": "scheduled"}).json()["tasks"]) == 24,
                   timeout=15, interval=0.2, message="the coordinator did not record the delayed tasks")
        page.goto(base)
        expect(page.get_by_test_id("coordinator")).to_have_text("coordinator online")
        page.get_by_test_id("f-limit").select_option("10")
        page.get_by_test_id("f-queue").fill("q2")
        rows = page.locator('[data-testid="tasks"] tbody tr')
        expect(rows).to_have_count(10)
        first = _shown(page)
        page.get_by_test_id("older").click()
        expect(page.get_by_test_id("page")).to_have_text("page 2")
        expect(rows).to_have_count(2)
        second = _shown(page)
        expect(page.get_by_test_id("older")).to_be_disabled()
        assert sorted(first + second) == sorted(i for i, (_, q) in ids.items() if q == "q2")
        assert not set(first) & set(second)
        page.get_by_test_id("newer").click()
        expect(page.get_by_test_id("page")).to_have_text("page 1")
        expect(rows.first).to_have_attribute("data-task", first[0])
        page.get_by_test_id("f-task").fill("b.resize")  # a filter change starts from the newest again
        expect(rows).to_have_count(4)
        assert sorted(_shown(page)) == sorted(i for i, (n, q) in ids.items() if (n, q) == ("b.resize", "q2"))
        expect(page.get_by_test_id("older")).to_be_disabled()


def _shown(page: Any) -> list[str]:
    return [str(x) for x in page.locator('[data-testid="tasks"] tbody tr').evaluate_all(
        "rows => rows.map(r => r.dataset.task)")]
