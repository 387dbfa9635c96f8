"""The coordinator link: whether a coordinator is online, and the commands it sends this worker.

Facts it is built on:

- The coordinator's presence is a retained message on ``P/coordinator`` (its Last Will says
  ``offline``; an empty retained message clears it). Anything but a readable ``online`` counts as
  offline: then nobody would take a deferred task or retry a failure, so the worker keeps its
  waiting tasks and sends final ``failed`` events itself. That includes ``degraded``: a
  coordinator whose store cannot commit records nothing durably and dispatches nothing, so it is
  given nothing to hold (docs/coordinator.md, "When the store cannot commit").
- A presence that arrives with the retain flag clear was published just now: its ``ts`` is a
  reading of the coordinator's clock, the fleet's clock (fleet_clock.py).
- Commands arrive on ``P/control/{worker}``. ``cancel`` stops a stale attempt (the coordinator
  gave the task to someone else): only the attempt named, if this worker still runs it. A
  ``cancel`` marked ``"cancelled": true`` is about the task itself (it was cancelled): it goes
  to the worker's cancels (cancel.py), as a request on ``P/cancel/{id}`` does. Anything else is
  rejected with an error report; bad input never stops the worker.
- Both are acknowledged at once by the dispatcher: unacknowledged, a message would hold one of
  the broker's in-flight slots for good.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from ..errors import DecodeError
from ..execution import Executor
from ..protocol import codec
from ..protocol.states import ONLINE
from ..protocol.topics import is_valid_id
from ..transport import Message
from .fleet_clock import FleetClock
from .running import Running

log = logging.getLogger(__name__)

CANCEL_TASK = "cancel-task"
"""What ``on_control`` returns for a cancel of the task itself: the dispatcher's cancels carry it out."""


class CoordinatorLink:
    """Presence and control ops. ``online`` is read without a lock: one attribute, set by one thread."""

    def __init__(self, worker_id: str, running: Running, executor: Executor, max_payload: int,
                 clock: FleetClock | None = None) -> None:
        self.worker_id = worker_id
        self.online = False
        self.clock = clock or FleetClock()
        self._running = running
        self._executor = executor
        self._max_payload = max_payload

    def on_presence(self, message: Message) -> None:
        received = time.monotonic()
        try:
            presence = codec.decode_json_object(message.payload, topic=message.topic)
        except DecodeError:
            presence = {}  # an empty retained message clears the presence
        online = presence.get("state") == ONLINE
        if online != self.online:
            state = presence.get("state")
            log.info("worker %s: coordinator %s", self.worker_id, state if isinstance(state, str) else "offline")
            if online:
                self.clock.expect()
            else:
                self.clock.give_up_waiting()
        self.online = online  # waiting tasks are handed on as they become overdue
        ts = presence.get("ts")
        if online and not message.retain and isinstance(ts, (int, float)) and not isinstance(ts, bool) \
                and math.isfinite(ts):
            self._read_clock(float(ts), (str(presence.get("client")), str(presence.get("pid"))), received)

    def _read_clock(self, ts: float, source: tuple[str, str], received: float) -> None:
        if self.clock.observe(ts, source, received):
            log.info("worker %s: judging expiry by the coordinator's clock (this host's is %+.3f s off)",
                     self.worker_id, self.clock.skew() or 0.0)

    def on_control(self, message: Message) -> str | None:
        """Carry out a command; returns why it was rejected (for an error report), or None."""
        try:
            command = codec.decode_json_object(message.payload, topic=message.topic, max_payload=self._max_payload)
        except DecodeError as exc:
            return exc.reason
        if command.get("op") == "cancel" and command.get("cancelled") is True:
            return CANCEL_TASK
        if command.get("op") == "cancel":
            self.cancel(str(command.get("id", "")), command.get("attempt"), str(command.get("reason", "")))
            return None
        return f"unknown control op {command.get('op')!r}"

    def cancel_request(self, message: Message, *, control: bool) -> tuple[str, Any, str]:
        """(task id, attempt or None, reason) of a cancel of a task: a request on ``P/cancel/{id}``
        (an empty payload is a request without a reason) or a ``control`` op; raises ``DecodeError``."""
        request: dict[str, Any] = {}
        if message.payload:
            request = codec.decode_json_object(message.payload, topic=message.topic, max_payload=self._max_payload)
        task_id = request.get("id") if control else message.topic.rsplit("/", 1)[-1]
        if not isinstance(task_id, str) or not is_valid_id(task_id):
            raise DecodeError(f"no valid task id in a cancel request: {task_id!r}", payload=message.payload,
                              topic=message.topic)
        reason = request.get("reason")
        return task_id, request.get("attempt"), reason[:1024] if isinstance(reason, str) else ""

    def cancel(self, task_id: str, attempt: Any, reason: str) -> None:
        """Stop ``task_id`` (only ``attempt`` of it, when given) if it runs here."""
        held = self._running.get(task_id)
        if held is None or held.run is None:
            return
        if attempt is not None and attempt != held.task.attempt:
            return
        log.warning("worker %s: stopping task %s attempt %d: %s", self.worker_id, task_id,
                    held.task.attempt, reason)
        self._executor.cancel(held.run, reason or "cancelled by the coordinator")
