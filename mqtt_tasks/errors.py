"""Every exception mqtt-tasks raises, in one tree.

::

    MqttTasksError
    ├── ConfigError                 bad settings or broker URL
    │   └── CronError               a malformed cron expression (names the bad field)
    ├── TransportError              the broker could not be reached or talked to
    │   ├── ConnectError            connect refused, unreachable, bad credentials, TLS
    │   ├── NotConnectedError       an operation that needs a live connection had none
    │   ├── CoordinatorTimeoutError no coordinator answered a query in time
    │   └── NotAuthorizedError      the broker refused a request: the user's ACL does not allow it (MQTT 5)
    ├── ProtocolError               a message does not follow the wire contract
    │   ├── DecodeError             bytes that are not a valid message (carries the payload)
    │   ├── EncodeError             a value JSON cannot carry (NaN, Infinity, an object): also a ValueError
    │   ├── PayloadTooLargeError    over the payload cap, refused before publishing
    │   └── SignatureError          a task's signature is missing or wrong (signing on)
    ├── TaskError                   about one task (carries ``task_id``)
    │   ├── TaskFailedError         the task ran and raised (remote type, message, traceback)
    │   ├── TaskDeadError           the coordinator gave up: attempts exhausted
    │   ├── SagaCompensatedError    a saga's step failed and every step done before it was undone
    │   ├── TaskCancelledError      the task was cancelled
    │   ├── TaskExpiredError        the task expired before it was started
    │   └── ResultTimeoutError      no final status within the caller's timeout
    ├── StoreError                  the coordinator's durable record could not be opened, read or written
    │   └── LeadershipLostError     another coordinator took over the prefix: this one may not write
    ├── TaskNotFoundError           the coordinator has no record of a task id
    ├── ScheduleNotFoundError       the coordinator has no schedule of that name
    ├── TaskTimeLimitExceeded       raised inside a task body that outlived its ``timeout``
    ├── TaskCancelled               raised inside a task body whose attempt was superseded
    └── UnknownTaskError            a task name that no function is registered under
"""

from __future__ import annotations

from typing import Any


class MqttTasksError(Exception):
    """Root of every exception raised by mqtt-tasks."""


class ConfigError(MqttTasksError, ValueError):
    """Invalid settings: a malformed broker URL, an impossible option."""


class CronError(ConfigError):
    """A malformed cron expression; the message names the bad field."""


class TransportError(MqttTasksError):
    """The broker could not be reached or talked to."""


class ConnectError(TransportError):
    """Connecting to the broker failed (refused, unreachable, bad credentials, TLS)."""

    def __init__(self, message: str, *, url: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.url = url
        self.reason = reason


class NotConnectedError(TransportError):
    """An operation needed a live connection and there was none."""


class CoordinatorTimeoutError(TransportError, TimeoutError):
    """No coordinator answered a query in time (none running, or the broker is unreachable)."""


class NotAuthorizedError(TransportError, PermissionError):
    """The broker refused a request (an MQTT 5 PUBACK "Not authorized"): the ACL of the user does
    not allow that topic (docs/security.md). Over MQTT 3.1.1 a refusal is silent: a query then
    ends in ``CoordinatorTimeoutError``."""


class ProtocolError(MqttTasksError):
    """A message does not follow the wire contract."""


class DecodeError(ProtocolError):
    """Bytes that are not a valid message. Carries the raw payload and the reason."""

    def __init__(self, reason: str, *, payload: bytes = b"", topic: str = "", task_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.payload = payload
        self.topic = topic
        self.task_id = task_id


class EncodeError(ProtocolError, ValueError):
    """A value the wire cannot carry: not JSON-serialisable, or NaN / Infinity (JSON has neither)."""


class PayloadTooLargeError(ProtocolError):
    """A payload over the configured cap; refused before it reaches the broker."""

    def __init__(self, size: int, limit: int, *, topic: str = "") -> None:
        super().__init__(f"payload of {size} bytes exceeds the {limit}-byte cap (topic {topic!r})")
        self.size = size
        self.limit = limit
        self.topic = topic


class SignatureError(ProtocolError):
    """A task's signature is missing or does not match (the reason is the message)."""


class TaskError(MqttTasksError):
    """Something about one task. ``task_id`` names it."""

    def __init__(self, message: str, *, task_id: str = "") -> None:
        super().__init__(message)
        self.task_id = task_id


class TaskFailedError(TaskError):
    """The task ran and raised. Carries the remote exception's type, message and traceback."""

    def __init__(
        self,
        task_id: str,
        error_type: str,
        error_message: str,
        traceback: str | None = None,
        *,
        attempt: int = 1,
        status: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"task {task_id} failed: {error_type}: {error_message}", task_id=task_id)
        self.error_type = error_type
        self.error_message = error_message
        self.remote_traceback = traceback
        self.attempt = attempt
        self.status = status or {}


class TaskDeadError(TaskFailedError):
    """The coordinator gave up on the task: its attempts are exhausted."""


class SagaCompensatedError(TaskFailedError):
    """A saga failed and was rolled back: the step that failed and what was undone are in ``status``
    (its ``reason`` and ``steps``)."""


class TaskCancelledError(TaskError):
    """The task was cancelled before it finished."""


class TaskExpiredError(TaskError):
    """The task expired before any worker started it."""


class ResultTimeoutError(TaskError, TimeoutError):
    """No final status arrived within the caller's timeout."""


class StoreError(MqttTasksError):
    """The coordinator's store failed: a file that cannot be opened as a database, a full disk, a
    locked or corrupt file. Carries the store's ``path``; the driver's exception is the cause."""

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class LeadershipLostError(StoreError):
    """Another coordinator leads the prefix now (its epoch replaced this one's): the batch was
    rolled back whole, and this coordinator must stop acting (docs/coordinator.md, "High availability")."""

    def __init__(self, message: str, *, epoch: int | None = None, path: str = "") -> None:
        super().__init__(message, path=path)
        self.epoch = epoch


class TaskTimeLimitExceeded(MqttTasksError):  # noqa: N818 - the name users see in tracebacks
    """Raised inside a task body that ran past its ``timeout``."""


class TaskNotFoundError(MqttTasksError, LookupError):
    """The coordinator has no record of this task id."""


class ScheduleNotFoundError(MqttTasksError, LookupError):
    """The coordinator has no schedule of that name."""


class TaskCancelled(MqttTasksError):  # noqa: N818 - raised inside a task body, named for users
    """Raised inside a task body whose attempt was superseded or cancelled."""


class UnknownTaskError(MqttTasksError, LookupError):
    """No function is registered under this task name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no task registered under the name {name!r}")
        self.name = name
