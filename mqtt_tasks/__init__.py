"""mqtt-tasks: distributed tasks over MQTT.

Users import from here; everything else is internal layout. The embedded broker
(``mqtt_tasks.broker``, extra ``mqtt-tasks[broker]``) is imported lazily and not re-exported.
"""

__version__ = "0.1.0"

from .app import TaskApp, TaskDef, TaskHandle, TaskOptions  # noqa: E402
from .config import Settings, TLSSettings  # noqa: E402
from .errors import (  # noqa: E402
    ConfigError,
    ConnectError,
    CoordinatorTimeoutError,
    DecodeError,
    MqttTasksError,
    NotConnectedError,
    PayloadTooLargeError,
    ProtocolError,
    ResultTimeoutError,
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
from .worker import Worker  # noqa: E402

_MODELS = ("ErrorReport", "StatusEvent", "Task", "WorkerState")


def __getattr__(name: str) -> object:
    """The pydantic models load on first use, so a worker that never needs them stays small."""
    if name in _MODELS:
        from .protocol import messages

        return getattr(messages, name)
    raise AttributeError(f"module 'mqtt_tasks' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODELS))

__all__ = [
    "ConfigError",
    "ConnectError",
    "CoordinatorTimeoutError",
    "DecodeError",
    "ErrorReport",
    "MqttTasksError",
    "NotConnectedError",
    "PayloadTooLargeError",
    "ProtocolError",
    "ResultTimeoutError",
    "Settings",
    "SignatureError",
    "StatusEvent",
    "StoreError",
    "TLSSettings",
    "Task",
    "TaskApp",
    "TaskCancelled",
    "TaskCancelledError",
    "TaskDeadError",
    "TaskDef",
    "TaskError",
    "TaskExpiredError",
    "TaskFailedError",
    "TaskHandle",
    "TaskNotFoundError",
    "TaskOptions",
    "TaskTimeLimitExceeded",
    "TransportError",
    "UnknownTaskError",
    "Worker",
    "WorkerState",
    "__version__",
]
