"""The HTTP API under ``/api/``: submit, read, list, cancel and retry tasks; the fleet; the live stream.

Built on these facts:

- Every call that reaches the coordinator or the broker blocks (it is the library's own client
  code), so it runs in a worker thread (``run_in_threadpool``) and the event loop stays free.
- Errors are JSON ``{"error": ..., "status": ...}`` with the code their cause deserves, mapped once
  (``status_for``): a malformed request 400, an unknown id 404, a task over the payload cap 413,
  a task in a state that forbids the action 409, the broker unreachable or no coordinator
  answering 503; anything unexpected is logged and answered 500. A POST whose ``Origin`` is
  another site is refused (403).
- ``POST /api/tasks`` answers 201 with the id once the broker acknowledged the task; with
  ``?wait=SECONDS`` it waits for the final status event and answers it (200, whatever the task's
  outcome: a failed task is data, not an HTTP error), or 202 with the id when it has not ended
  within the wait.
- ``/api/events`` is a server-sent event stream: a snapshot of the monitor (fleet, recent events,
  the series) whenever it changed, at most every half second, and at least every second (the plots
  move on with time, and the traffic keeps proxies from closing an idle stream).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..errors import (
    ConfigError,
    CoordinatorTimeoutError,
    DecodeError,
    MqttTasksError,
    PayloadTooLargeError,
    ResultTimeoutError,
    ScheduleNotFoundError,
    TaskNotFoundError,
    TransportError,
)
from ..protocol.topics import is_valid_id
from ..store.listing import DEFAULT_LIMIT, MAX_LIMIT, parse_query
from .submission import parse_submission, wait_seconds

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from .state import WebState

log = logging.getLogger(__name__)

STREAM_EVERY_S = 0.5


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def status_for(exc: Exception) -> int:
    if isinstance(exc, HTTPError):
        return exc.status
    if isinstance(exc, PayloadTooLargeError):
        return 413
    if isinstance(exc, ConfigError | DecodeError):
        return 400
    if isinstance(exc, TaskNotFoundError | ScheduleNotFoundError):
        return 404
    if isinstance(exc, TransportError | CoordinatorTimeoutError):
        return 503
    return 409


def error_response(exc: Exception) -> JSONResponse:
    status = status_for(exc)
    return JSONResponse({"error": " ".join(str(exc).split()), "status": status}, status_code=status)


async def blocking(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await run_in_threadpool(fn, *args, **kwargs)


def web_state(request: Request) -> WebState:
    state: WebState = request.app.state.web
    state.ensure_started()
    return state


def _task_id(request: Request) -> str:
    task_id = str(request.path_params["task_id"])
    if not is_valid_id(task_id):
        raise HTTPError(400, f"invalid task id {task_id!r}: 1-128 characters of A-Z a-z 0-9 _ . : -")
    return task_id


# -- tasks -----------------------------------------------------------------------------------
async def submit_task(request: Request) -> Response:
    state = web_state(request)
    try:
        body = json.loads(await request.body(), parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPError(400, f"the body is not JSON: {exc}") from None
    submission = parse_submission(body)
    wait = wait_seconds(request.query_params.get("wait"), state.options.max_wait)
    response: Response = await blocking(_publish_and_wait, state, submission, wait)
    return response


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _publish_and_wait(state: WebState, submission: Any, wait: float | None) -> Response:
    producer = state.producer()
    handle = producer.send(submission.task, submission.args, submission.kwargs, options=submission.options,
                           task_id=submission.task_id, extra=submission.extra or None)
    if not producer.flush(state.options.ack_timeout):
        raise HTTPError(503, f"the broker did not acknowledge task {handle.id} within {state.options.ack_timeout:g}s "
                             "(it is sent when the connection comes back)")
    if wait is None:
        return JSONResponse({"id": handle.id, "state": "submitted"}, status_code=201)
    try:
        event = handle.status(wait)
    except ResultTimeoutError:
        return JSONResponse({"id": handle.id, "state": "pending", "wait": wait}, status_code=202)
    return JSONResponse(event.model_dump(mode="json", exclude_none=True))


async def get_task(request: Request) -> Response:
    from ..coordinator import query_status

    state, task_id = web_state(request), _task_id(request)
    return JSONResponse(await blocking(query_status, state.settings, task_id, state.options.query_timeout))


async def list_tasks(request: Request) -> Response:
    """One page of the coordinator's task list, filtered there; ``next`` is the ``before`` of the
    following page. ``q`` (id contains) filters the page here: a page may come back short."""
    from ..coordinator import query_task_page

    state, params = web_state(request), request.query_params
    wanted: dict[str, Any] = {name: params.get(name) or None for name in ("state", "queue", "task", "before")}
    try:
        wanted["limit"] = int(params.get("limit") or DEFAULT_LIMIT)
    except ValueError:
        raise HTTPError(400, f"limit: an integer 1-{MAX_LIMIT}, got {params.get('limit')!r}") from None
    if not 1 <= wanted["limit"] <= MAX_LIMIT:
        raise HTTPError(400, f"limit: an integer 1-{MAX_LIMIT}, got {wanted['limit']}")
    try:
        parse_query(wanted)  # the coordinator checks them too; a bad one need not travel
    except ValueError as exc:
        raise HTTPError(400, str(exc)) from None
    answer = await blocking(query_task_page, state.settings, wanted["state"], wanted["limit"],
                            state.options.query_timeout, queue=wanted["queue"], task=wanted["task"],
                            before=wanted["before"])
    search = params.get("q")
    tasks = [t for t in answer["tasks"] if not search or search in str(t["id"])]
    return JSONResponse({"tasks": tasks, "next": answer["next"]})


async def cancel_task(request: Request) -> Response:
    from ..coordinator import request_cancel

    state, task_id = web_state(request), _task_id(request)
    reason = await _optional_reason(request)
    return JSONResponse(await blocking(request_cancel, state.settings, task_id, reason, state.options.query_timeout))


async def _optional_reason(request: Request) -> str | None:
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise HTTPError(400, f"the body is not JSON: {exc}") from None
    reason = body.get("reason") if isinstance(body, dict) else None
    if reason is not None and not isinstance(reason, str):
        raise HTTPError(400, "reason: must be a string")
    return reason


async def retry_task(request: Request) -> Response:
    from ..coordinator import retry_task as retry

    state, task_id = web_state(request), _task_id(request)
    return JSONResponse({"task": await blocking(retry, state.settings, task_id, state.options.query_timeout)})


# -- the fleet, the coordinator, schedules ------------------------------------------------------
async def list_workers(request: Request) -> Response:
    state = web_state(request)
    return JSONResponse({"workers": state.workers(), "connected": state.monitor.connected})


async def coordinator_stats(request: Request) -> Response:
    from ..coordinator import query_stats

    state = web_state(request)
    answer = await blocking(query_stats, state.settings, state.options.query_timeout)
    answer.pop("correlation", None)
    return JSONResponse(answer)


async def list_schedules(request: Request) -> Response:
    from ..schedules import list_schedules as schedules

    state = web_state(request)
    return JSONResponse({"schedules": await blocking(schedules, state.settings, state.options.query_timeout)})


async def metrics(request: Request) -> Response:
    from .metrics import CONTENT_TYPE, exposition

    state = web_state(request)
    if state.registry is None:
        raise HTTPError(404, "metrics are off on this server")
    return Response(await blocking(exposition, state.registry), media_type=CONTENT_TYPE)


# -- the live stream ---------------------------------------------------------------------------
async def events(request: Request) -> Response:
    state = web_state(request)
    return StreamingResponse(_stream(request, state), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


async def _stream(request: Request, state: WebState) -> AsyncIterator[str]:
    sent, quiet_since = -1, time.monotonic()
    while not await request.is_disconnected():
        version = state.monitor.version
        if version != sent or time.monotonic() - quiet_since > 1.0:
            sent, quiet_since = version, time.monotonic()
            yield f"data: {json.dumps(state.monitor.snapshot(time.time()))}\n\n"
        await asyncio.sleep(STREAM_EVERY_S)


def cross_site(request: Request) -> bool:
    """A browser's request made by another site's page: its ``Origin`` names another host. (A
    page elsewhere could otherwise submit or cancel tasks through a browser on this machine, where
    no token is required.) Clients that are not browsers send no ``Origin``."""
    origin = request.headers.get("origin")
    return origin is not None and urlsplit(origin).netloc != request.headers.get("host")


def handled(endpoint: Callable[[Request], Any]) -> Callable[[Request], Any]:
    """The endpoint, with every error answered as JSON (``status_for``; anything unexpected: 500),
    and actions from another site's page refused (403)."""
    async def wrapper(request: Request) -> Response:
        try:
            if request.method == "POST" and cross_site(request):
                raise HTTPError(403, f"cross-site request from {request.headers.get('origin')} refused")
            response: Response = await endpoint(request)
        except (HTTPError, MqttTasksError) as exc:
            return error_response(exc)
        except Exception as exc:
            log.exception("dashboard: %s %s failed", request.method, request.url.path)
            return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}", "status": 500},
                                status_code=500)
        return response
    wrapper.__name__ = endpoint.__name__
    wrapper.__doc__ = endpoint.__doc__
    return wrapper
