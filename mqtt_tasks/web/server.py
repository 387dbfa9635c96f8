"""The dashboard's ASGI application (``create_app``) and the server that runs it (``run_dashboard``).

Built on these facts:

- ``create_app`` returns a Starlette app with every route relative to where it is mounted: the
  page loads ``static/...`` and calls ``api/...`` without a leading slash, so
  ``Mount("/tasks", app=create_app(settings))`` in a user's app works unchanged.
- The page and its script are files of the package (``static/``): no CDN, no build step.
- ``run_dashboard`` serves it with uvicorn and gives open streams two seconds on shutdown. It
  refuses to listen beyond loopback without a token: it makes one up and prints it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import __version__
from ..config import Settings
from . import api
from .auth import TokenAuth
from .openapi import openapi_document
from .state import WebOptions, WebState

STATIC = Path(__file__).parent / "static"


def create_app(settings: Settings, options: WebOptions | None = None) -> Any:
    """The dashboard and HTTP API as an ASGI app, reading the broker and coordinator of ``settings``."""
    options = options or WebOptions()
    state = WebState(settings, options)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.ensure_started()
        yield
        state.close()

    def route(path: str, endpoint: Callable[[Request], Any], methods: list[str]) -> Route:
        return Route(path, api.handled(endpoint), methods=methods)

    routes = [
        Route("/", page, methods=["GET"]),
        route("/api/tasks", api.submit_task, ["POST"]),
        route("/api/tasks", api.list_tasks, ["GET"]),
        route("/api/tasks/{task_id}", api.get_task, ["GET"]),
        route("/api/tasks/{task_id}/cancel", api.cancel_task, ["POST"]),
        route("/api/tasks/{task_id}/retry", api.retry_task, ["POST"]),
        route("/api/workers", api.list_workers, ["GET"]),
        route("/api/stats", api.coordinator_stats, ["GET"]),
        route("/api/schedules", api.list_schedules, ["GET"]),
        route("/api/events", api.events, ["GET"]),
        Route("/api/openapi.json", openapi, methods=["GET"]),
        route("/metrics", api.metrics, ["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.web = state
    return TokenAuth(app, options.token) if options.token else app


def close_app(app: Any) -> None:
    """Close what an app of ``create_app`` holds (its MQTT connections, the monitor's thread).
    Served on its own, its lifespan does it; mounted in another ASGI app it gets no lifespan events,
    so the host app calls this when it shuts down (docs/dashboard.md)."""
    inner = app.app if isinstance(app, TokenAuth) else app
    state: WebState = inner.state.web
    state.close()


async def page(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document(__version__))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def effective_token(host: str, token: str | None) -> str | None:
    """The token to require: the one given; on a non-loopback address without one, a new one."""
    if token:
        return token
    return None if is_loopback(host) else secrets.token_urlsafe(24)


def run_dashboard(settings: Settings, host: str = "127.0.0.1", port: int = 8080, options: WebOptions | None = None,
                  on_ready: Callable[[str], None] | None = None) -> None:
    """Serve the dashboard until SIGINT/SIGTERM, then return. ``on_ready(url)`` once it listens.

    ``OSError`` when the address cannot be bound (the port is taken), before anything starts."""
    import uvicorn

    options = options or WebOptions()
    sock = bind(host, port)
    config = uvicorn.Config(create_app(settings, options), log_level="warning", timeout_graceful_shutdown=2,
                            access_log=False)
    server = _quiet_exit_server(uvicorn.Server)(config)
    if on_ready is not None:
        shown = host if ":" not in host else f"[{host}]"
        url = f"http://{shown}:{sock.getsockname()[1]}/" + (f"?token={options.token}" if options.token else "")
        server.on_ready = lambda: on_ready(url)
    server.run(sockets=[sock])


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _quiet_exit_server(base: type[Any]) -> type[Any]:
    """uvicorn's server that says when it listens, and whose SIGTERM/SIGINT ends ``run`` normally:
    uvicorn itself raises the signal again once it stopped, so the process would die of it."""

    class DashboardServer(base):  # type: ignore[misc]
        on_ready: Callable[[], None] | None = None

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started and self.on_ready is not None:
                self.on_ready()

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            if sig in self._captured_signals:
                self._captured_signals.remove(sig)

    return DashboardServer
