"""Helpers for the web tests: the dashboard server on a free port in a thread, an HTTP client.

`dashboard_server(settings, options)` runs the real ASGI app under uvicorn, on a real socket,
inside the test process, and stops it at exit (uvicorn's own `should_exit`, no signal).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn

from mqtt_tasks.config import Settings
from mqtt_tasks.web import WebOptions, create_app
from tests.brokers import free_port, wait_until

FAST = WebOptions(query_timeout=2.0, ack_timeout=2.0, max_wait=20.0)


@contextmanager
def dashboard_server(settings: Settings, options: WebOptions = FAST) -> Iterator[str]:
    """The base URL (``http://127.0.0.1:PORT/``) of a running dashboard server."""
    port = free_port()
    config = uvicorn.Config(create_app(settings, options), host="127.0.0.1", port=port, log_level="warning",
                            timeout_graceful_shutdown=1, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-dashboard", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=10.0, message="the dashboard server did not start")
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(10.0)
        assert not thread.is_alive(), "the dashboard server did not stop"


def client(base: str, token: str | None = None) -> httpx.Client:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=base, headers=headers, timeout=30.0)
