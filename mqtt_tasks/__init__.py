"""mqtt-tasks: distributed tasks over MQTT.

Users import from here; everything else is internal layout. The pydantic models and the embedded
broker (``EmbeddedBroker``, extra ``mqtt-tasks[broker]``) are imported on first use, so a worker
that needs neither never loads pydantic or amqtt.
"""

__version__ = "0.1.0"

from .app import TaskApp, TaskDef, TaskHandle, TaskOptions, TaskProgress  # noqa: E402
from .canvas import SagaStep, Signature, Workflow, chain, chord, group, saga, step  # noqa: E402
from .config import Settings, TLSSettings  # noqa: E402
from .context import TaskContext, current_task  # noqa: E402
from .errors import (  # noqa: E402
    ConfigError,
    ConnectError,
    CoordinatorTimeoutError,
    CronError,
    DecodeError,
    EncodeError,
    LeadershipLostError,
    MqttTasksError,
    NotAuthorizedError,
    NotConnectedError,
    PayloadTooLargeError,
    ProtocolError,
    ResultTimeoutError,
    SagaCompensatedError,
    ScheduleNotFoundError,
    SignatureError,
    StoreError,
    TaskCancelled,
    TaskCancelledError,
    TaskDeadError,
    TaskError,
    TaskExpiredError,
    TaskFailedError,
    TaskNotFoundError,
    TaskTimeLimitExceeded,
    TransportError,
    UnknownTaskError,
)
from .receipts import ReceiptPolicy  # noqa: E402
from .worker import Worker  # noqa: E402

_MODELS = ("ErrorReport", "StatusEvent", "Task", "WorkerState")
_LAZY = (*_MODELS, "EmbeddedBroker")


def __getattr__(name: str) -> object:
    """The pydantic models and the embedded broker load on first use."""
    if name in _MODELS:
        from .protocol import messages

        return getattr(messages, name)
    if name == "EmbeddedBroker":
        try:
            from .broker import EmbeddedBroker
        except ImportError as exc:
            raise ImportError(f"EmbeddedBroker needs amqtt ({exc.name} is missing): "
                              "pip install 'mqtt-tasks[broker]'") from exc
        return EmbeddedBroker
    raise AttributeError(f"module 'mqtt_tasks' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "ConfigError",
    "ConnectError",
    "CoordinatorTimeoutError",
    "CronError",
    "DecodeError",
    "EmbeddedBroker",
    "EncodeError",
    "ErrorReport",
    "LeadershipLostError",
    "MqttTasksError",
    "NotAuthorizedError",
    "NotConnectedError",
    "PayloadTooLargeError",
    "ProtocolError",
    "ReceiptPolicy",
    "ResultTimeoutError",
    "SagaCompensatedError",
    "SagaStep",
    "ScheduleNotFoundError",
    "Settings",
    "Signature",
    "SignatureError",
    "StatusEvent",
    "StoreError",
    "TLSSettings",
    "Task",
    "TaskApp",
    "TaskCancelled",
    "TaskCancelledError",
    "TaskContext",
    "TaskDeadError",
    "TaskDef",
    "TaskError",
    "TaskExpiredError",
    "TaskFailedError",
    "TaskHandle",
    "TaskNotFoundError",
    "TaskOptions",
    "TaskProgress",
    "TaskTimeLimitExceeded",
    "TransportError",
    "UnknownTaskError",
    "Worker",
    "WorkerState",
    "Workflow",
    "__version__",
    "chain",
    "chord",
    "current_task",
    "group",
    "saga",
    "step",
]
