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
    """Serve the dashboard until SIGINT/SIGTERM. ``on_ready(url)`` once it listens."""
    import uvicorn

    options = options or WebOptions()
    app = create_app(settings, options)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2,
                            access_log=False)
    server = uvicorn.Server(config)
    if on_ready is not None:
        server_startup = server.startup

        async def startup(sockets: Any = None) -> None:
            await server_startup(sockets)
            if server.started:
                bound = server.servers[0].sockets[0].getsockname()[1] if server.servers else port
                shown = f"http://{host if ':' not in host else f'[{host}]'}:{bound}/"
                on_ready(shown + (f"?token={options.token}" if options.token else ""))
        server.startup = startup  # type: ignore[method-assign]
    server.run()
