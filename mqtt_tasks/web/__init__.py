"""The web dashboard, the HTTP API and the Prometheus metrics (extra ``mqtt-tasks[web]``).

Nothing in the core imports this package: ``mqtt-worker`` on a device never loads Starlette,
uvicorn or prometheus-client. ``mqtt-tasks dashboard`` runs it (``run_dashboard``); a user's own
ASGI app mounts it (``create_app``, and ``close_app`` when that app shuts down). docs/dashboard.md
describes the page, the API and the metrics.

| module | job |
|---|---|
| ``server`` | the ASGI app and its routes; the uvicorn server; the token made up off loopback |
| ``api`` | the handlers under ``/api/``, errors as JSON with their status code, the live stream |
| ``submission`` | ``POST /api/tasks``: the body checked (pure) |
| ``state`` | what one server holds: settings, monitor, producer, metrics registry |
| ``monitor`` | the live view: retained worker states and status events folded on one thread |
| ``series`` | throughput and latency per second (pure) |
| ``metrics`` | the Prometheus families, from events and from the coordinator's stats |
| ``auth`` | the token, as an ASGI middleware |
| ``openapi`` | the OpenAPI document |

A worker's own metrics (``mqtt-worker --metrics-port``) are ``mqtt_tasks.worker.metrics``: they need
prometheus-client only (extra ``metrics``).
"""

from __future__ import annotations

from .server import close_app, create_app, run_dashboard
from .state import WebOptions

__all__ = ["WebOptions", "close_app", "create_app", "run_dashboard"]
