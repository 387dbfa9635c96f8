"""The OpenAPI 3.1 document of the HTTP API (``GET /api/openapi.json``), written out by hand.

tests/test_web_api.py checks that every route of the server is in it and that each path's
methods match, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from ..protocol.states import RECORD_STATES

_ERROR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_ERRORS = {"400": _ERROR, "401": _ERROR, "503": _ERROR}
_ID = {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string",
                                                                     "pattern": "^[A-Za-z0-9_.:-]{1,128}$"}}
_JSON = {"application/json": {"schema": {"type": "object"}}}


def _op(summary: str, ok: str, *, params: list[dict[str, Any]] | None = None, extra: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None, ok_schema: dict[str, Any] | None = None) -> dict[str, Any]:
    content = {"application/json": {"schema": ok_schema}} if ok_schema else _JSON
    responses = {ok: {"description": "ok", "content": content}, **_ERRORS, **(extra or {})}
    operation: dict[str, Any] = {"summary": summary, "parameters": params or [], "responses": responses}
    if body is not None:
        operation["requestBody"] = body
    return operation


SUBMISSION = {
    "type": "object", "required": ["task"], "additionalProperties": False,
    "properties": {
        "task": {"type": "string", "description": "the registered task name"},
        "args": {"type": "array"}, "kwargs": {"type": "object"},
        "queue": {"type": "string", "default": "default"},
        "id": {"type": "string", "description": "default: a new random id"},
        "priority": {"type": "integer", "minimum": 0, "maximum": 9},
        "delay": {"type": "number", "exclusiveMinimum": 0, "description": "do not start before this many seconds"},
        "max_attempts": {"type": "integer", "minimum": 1, "maximum": 1000},
        "timeout": {"type": "number", "exclusiveMinimum": 0},
        "expires": {"type": "number", "exclusiveMinimum": 0},
    },
}


TASK_PAGE = {
    "type": "object", "required": ["tasks", "next"],
    "properties": {
        "tasks": {"type": "array", "items": {"type": "object"}, "description": "task summaries, newest first"},
        "next": {"type": ["string", "null"], "description": "pass as ?before= for the next page; null on the last"},
    },
}


def openapi_document(version: str) -> dict[str, Any]:
    limit = {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000,
                                                         "default": 100}}
    wait = {"name": "wait", "in": "query", "schema": {"type": "number"},
            "description": "wait up to this many seconds for the final status event"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "mqtt-tasks", "version": version,
                 "description": "Submit and follow tasks of mqtt-tasks over HTTP (docs/dashboard.md)."},
        "components": {
            "schemas": {"Error": {"type": "object", "required": ["error", "status"],
                                  "properties": {"error": {"type": "string"}, "status": {"type": "integer"}}},
                        "Submission": SUBMISSION},
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"token": []}],
        "paths": {
            "/api/tasks": {
                "post": _op("Submit a task; with ?wait=, its final status event", "201", params=[wait],
                            extra={"200": {"description": "the final status event (wait)", "content": _JSON},
                                   "413": _ERROR, "403": _ERROR,
                                   "202": {"description": "not ended within the wait", "content": _JSON}},
                            body={"required": True, "content": {"application/json": {
                                "schema": {"$ref": "#/components/schemas/Submission"}}}}),
                "get": _op("A page of the coordinator's tasks, most recently updated first", "200",
                           params=[{"name": "state", "in": "query",
                                    "schema": {"type": "string", "enum": list(RECORD_STATES)}}, limit,
                                   {"name": "queue", "in": "query", "schema": {"type": "string"}},
                                   {"name": "task", "in": "query", "schema": {"type": "string"},
                                    "description": "the task name"},
                                   {"name": "before", "in": "query", "schema": {"type": "string"},
                                    "description": "the next of the previous page: the page after it"},
                                   {"name": "q", "in": "query", "schema": {"type": "string"},
                                    "description": "id contains (filters the page on the web server)"}],
                           ok_schema=TASK_PAGE),
            },
            "/api/tasks/{task_id}": {"get": _op("A task's record: state, attempts, history, result", "200",
                                                params=[_ID], extra={"404": _ERROR})},
            "/api/tasks/{task_id}/cancel": {"post": _op("Cancel a task", "200", params=[_ID],
                                                        extra={"403": _ERROR, "404": _ERROR, "409": _ERROR})},
            "/api/tasks/{task_id}/retry": {"post": _op("Run a dead, cancelled or expired task again", "200",
                                                       params=[_ID],
                                                       extra={"403": _ERROR, "404": _ERROR, "409": _ERROR})},
            "/api/workers": {"get": _op("The workers, from their retained states", "200")},
            "/api/stats": {"get": _op("The coordinator's counters, backlog and view of the workers", "200")},
            "/api/schedules": {"get": _op("The coordinator's periodic schedules", "200")},
            "/api/events": {"get": {"summary": "Server-sent events: the live view", "responses": {
                "200": {"description": "text/event-stream of JSON snapshots"}}}},
            "/api/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "ok"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "ok"}}}},
        },
    }
