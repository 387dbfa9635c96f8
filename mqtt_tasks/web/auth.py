"""Token authentication for the dashboard server, as a plain ASGI middleware.

Built on these facts:

- With no token configured every request passes: the default on a loopback address, where only
  this machine's users reach the server. ``run_dashboard`` makes up a token when it listens on
  any other address without one, so the server is never open to a network by accident.
- With a token, a request carries it as ``Authorization: Bearer TOKEN`` (the API, Prometheus'
  ``authorization`` setting), or as the cookie ``mqtt_tasks_token``, which the dashboard page
  gets by being opened once as ``/?token=TOKEN``. Anything else is answered 401 with a JSON
  error, and the comparison takes constant time.
- A plain ASGI middleware, not Starlette's ``BaseHTTPMiddleware``: the live stream (server-sent
  events) passes through unbuffered.
"""

from __future__ import annotations

import hmac
import json
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

COOKIE = "mqtt_tasks_token"
ASGIApp = Any


class TokenAuth:
    """Let a request through only when it carries ``token`` (or when no token is set)."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.token is None or scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        offered = self._from_query(scope)
        if offered is not None and self._matches(offered):
            await self.app(scope, receive, self._setting_cookie(send))
            return
        if any(self._matches(t) for t in self._offered(scope)):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await _unauthorized(send)

    def _matches(self, offered: str) -> bool:
        return self.token is not None and hmac.compare_digest(offered.encode(), self.token.encode())

    @staticmethod
    def _from_query(scope: dict[str, Any]) -> str | None:
        values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
        return values[0] if values else None

    @staticmethod
    def _offered(scope: dict[str, Any]) -> list[str]:
        offered = []
        for name, value in scope.get("headers", []):
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                offered.append(value[7:].decode("latin-1").strip())
            elif name == b"cookie":
                cookie: SimpleCookie = SimpleCookie()
                cookie.load(value.decode("latin-1"))
                if COOKIE in cookie:
                    offered.append(cookie[COOKIE].value)
        return offered

    def _setting_cookie(self, send: Any) -> Any:
        async def with_cookie(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                cookie = f"{COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/".encode()
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
            await send(message)
        return with_cookie


async def _unauthorized(send: Any) -> None:
    body = json.dumps({"error": "a token is required: Authorization: Bearer TOKEN, or open /?token=TOKEN",
                       "status": 401}).encode()
    await send({"type": "http.response.start", "status": 401,
                "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
    await send({"type": "http.response.body", "body": body})
