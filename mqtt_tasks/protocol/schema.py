"""JSON Schema of the wire messages, generated from the models (``mqtt-tasks schema``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .deploys import Bundle, DeployReport
from .messages import (
    CancelRequest,
    CoordinatorPresence,
    ErrorReport,
    Receipt,
    Schedule,
    StatusEvent,
    Task,
    WorkerState,
    Workflow,
)

MODELS: dict[str, type[BaseModel]] = {"task": Task, "status": StatusEvent, "worker": WorkerState, "error": ErrorReport,
                                      "presence": CoordinatorPresence, "receipt": Receipt, "cancel": CancelRequest,
                                      "schedule": Schedule, "workflow": Workflow, "bundle": Bundle,
                                      "deploy_report": DeployReport}


def json_schemas() -> dict[str, dict[str, Any]]:
    """One JSON Schema (draft 2020-12) per message kind (``MODELS``), keyed by kind."""
    schemas = {}
    for kind, model in MODELS.items():
        schema = model.model_json_schema()
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"mqtt-tasks/v1/{kind}.json"
        schemas[kind] = schema
    return schemas
