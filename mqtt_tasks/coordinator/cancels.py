"""Cancel requests: ``P/cancel/{task_id}``, from ``handle.cancel()``, ``mqtt-tasks cancel`` or any client.

Built on these facts:

- The request names the task in its topic; its payload may be empty or ``{}``, or say a
  ``reason``, and a ``reply_to`` (else the MQTT 5 Response Topic) with a ``correlation`` for an
  answer: ``{"id", "ok", "state", "error"?, "correlation"}``. The reply guard of
  ``protocol.events`` applies, as to every reply.
- A live task ends ``cancelled`` at once, whatever it waits in (queued, dispatched, backlog,
  retrying; delayed ones too): the coordinator holds it, so nothing more of it is dispatched. Its
  final event goes to the task's reply topic. A started (or dispatched) attempt is also stopped
  through its worker's control topic (``leases.on_cancel``); every worker reads the request too.
- A workflow's id cancels the workflow (``workflows.py``; docs/workflows.md).
- Bad input is answered, never silent: an unknown id or a task already finished gets
  ``"ok": false`` and the reason on ``reply_to``, or, when the request named none, a report on
  ``P/errors``. Cancelling a task already ``cancelled`` is ``ok``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .. import leases
from ..errors import ConfigError, CoordinatorTimeoutError, DecodeError, MqttTasksError, TaskNotFoundError
from ..protocol import codec, events
from ..protocol.messages import CancelRequest
from ..protocol.states import CANCELLED
from ..protocol.topics import Topics, is_valid_id
from ..transport import Message
from .queries import exchange

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..config import Settings
    from .effects import Effects
    from .records import Records
    from .workflows import Workflows

log = logging.getLogger(__name__)

DEFAULT_REASON = "cancelled by request"


class CancelRequests:
    """Carries out the requests on ``P/cancel/+``."""

    def __init__(self, settings: Settings, topics: Topics, records: Records, effects: Effects,
                 clock: Callable[[], float]) -> None:
        self._max_payload = settings.max_payload
        self._topics = topics
        self._records = records
        self._effects = effects
        self._clock = clock
        self.workflows: Workflows | None = None  # a workflow id is cancelled there

    def on_request(self, message: Message) -> None:
        task_id = self._topics.task_id_of_cancel(message.topic)
        if task_id is None or not is_valid_id(task_id):
            raise DecodeError(f"cancel request on {message.topic!r}: not a valid task id", payload=message.payload,
                              topic=message.topic)
        request = codec.decode(CancelRequest, message.payload, topic=message.topic,
                               max_payload=self._max_payload) if message.payload else CancelRequest()
        ok, state, error = self.cancel(task_id, request.reason or DEFAULT_REASON)
        reply_to = request.reply_to or message.response_topic
        if reply_to is None:
            if error is not None:
                self._effects.report(error, message.topic, message.payload, task_id)
            return
        refusal = events.reply_refusal(self._topics, reply_to)
        if refusal is not None:
            raise DecodeError(f"cancel request with an invalid reply_to: {refusal}", payload=message.payload,
                              topic=message.topic, task_id=task_id)
        answer = events.cancel_answer(task_id, ok, state, error=error, correlation=request.correlation)
        self._effects.send(reply_to, codec.encode(answer), correlation_data=message.correlation_data)

    def cancel(self, task_id: str, reason: str) -> tuple[bool, str | None, str | None]:
        """(ok, the task's state now, why not) of cancelling ``task_id``."""
        record = self._records.get(task_id)
        if record is None:
            answer = self.workflows.cancel(task_id, reason) if self.workflows is not None else None
            return answer or (False, None, f"cannot cancel task {task_id!r}: no record of it")
        if record.terminal:
            if record.state == CANCELLED:
                return True, CANCELLED, None
            return False, record.state, f"cannot cancel task {task_id!r}: it already ended {record.state}"
        was = record.state
        self._records.save(record, leases.on_cancel(record, reason, self._clock()))
        log.info("coordinator: task %s cancelled (it was %s): %s", task_id, was, reason)
        return True, record.state, None


# -- the client side ---------------------------------------------------------------------------
def request_cancel(settings: Settings, task_id: str, reason: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
    """Cancel ``task_id`` and wait for the coordinator's answer: ``{"id", "ok": true, "state"}``.

    Raises ``TaskNotFoundError`` (the coordinator has no record of it), ``MqttTasksError`` (it
    already ended otherwise), ``CoordinatorTimeoutError`` (no coordinator answered: the request
    was still published, and workers stop the task if they hold it)."""
    if not is_valid_id(task_id):
        raise ConfigError(f"invalid task id {task_id!r}: 1-128 characters of A-Z a-z 0-9 _ . : -")
    answer = exchange(settings, Topics(settings.prefix).cancel(task_id),
                      lambda reply_to, correlation: events.cancel_request(reason=reason, reply_to=reply_to,
                                                                          correlation=correlation),
                      timeout, kind="c")
    if answer is None:
        raise CoordinatorTimeoutError(
            f"no coordinator answered within {timeout:g}s; the cancel of {task_id} was published: a worker that "
            "holds the task (running or waiting for a slot) stops it, but one still queued on the broker runs")
    if not answer.get("ok"):
        error = str(answer.get("error") or f"cannot cancel task {task_id!r}")
        raise TaskNotFoundError(error) if answer.get("state") is None else MqttTasksError(error)
    return answer
