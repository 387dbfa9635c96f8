"""Periodic tasks on the client side: declare them in code, manage them over the wire.

A schedule lives in the coordinator's store, which fires it (coordinator/schedules.py); this
module is how a schedule gets there (docs/scheduling.md):

- ``validate_schedule``: a schedule's JSON object checked against ``protocol.messages.Schedule``;
  a bad one is a ``ConfigError`` of one line naming the bad field.
- ``put_schedule`` / ``list_schedules`` / ``remove_schedule``: the ``schedule.put``,
  ``schedule.list`` and ``schedule.rm`` queries on ``P/rpc/coordinator``, as ``mqtt-tasks schedule``
  sends them. A put is idempotent: the same definition again changes nothing, and a changed one
  keeps the schedule's history (no fire time from the past runs because of it).
- ``@app.periodic(...)`` (``periodic``) declares a schedule with the task; a worker of that app
  registers the app's schedules with the coordinator when it starts (``Registrar``), retrying
  until a coordinator has acknowledged each one, so code-declared schedules reach the coordinator
  whichever starts first. A schedule deleted from the code stays until ``mqtt-tasks schedule rm``.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, CoordinatorTimeoutError, MqttTasksError, ScheduleNotFoundError

if TYPE_CHECKING:
    from collections.abc import Callable

    from .app import TaskApp
    from .config import Settings

log = logging.getLogger(__name__)

REGISTER_RETRY_S = (1.0, 2.0, 5.0, 10.0)
"""The registrar's waits between rounds while no coordinator answers (the last one repeats)."""


def validate_schedule(data: dict[str, Any]) -> dict[str, Any]:
    """The schedule as the wire carries it (defaults filled in, ``None`` left out), or ``ConfigError``."""
    from pydantic import ValidationError

    from .protocol.messages import Schedule

    try:
        model = Schedule.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        name = data.get("name") if isinstance(data, dict) else None
        raise ConfigError(f"invalid schedule {name!r}: {where + ': ' if where else ''}{message}") from None
    return model.model_dump(exclude_none=True)


# -- the queries ------------------------------------------------------------------------------
def _answer(settings: Settings, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    from .coordinator.queries import _ask

    answer = _ask(settings, request, timeout)
    if not answer.get("ok"):
        error = str(answer.get("error") or "the coordinator refused the request")
        if answer.get("not_found"):
            raise ScheduleNotFoundError(error)
        raise ConfigError(error)
    return answer


def put_schedule(settings: Settings, schedule: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Create or update a schedule; the answer has ``schedule`` (as stored), ``created``, ``changed``."""
    return _answer(settings, {"op": "schedule.put", "schedule": validate_schedule(schedule)}, timeout)


def list_schedules(settings: Settings, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Every schedule the coordinator holds, by name, with its next fire and counters."""
    schedules: list[dict[str, Any]] = _answer(settings, {"op": "schedule.list"}, timeout)["schedules"]
    return schedules


def remove_schedule(settings: Settings, name: str, timeout: float = 5.0) -> None:
    """Delete a schedule (its fired tasks are not touched); ``ScheduleNotFoundError`` if there is none."""
    _answer(settings, {"op": "schedule.rm", "name": name}, timeout)


# -- declared in code -------------------------------------------------------------------------
def periodic(app: TaskApp, *, cron: str | None = None, every: int | None = None, name: str | None = None,
             args: list[Any] | tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None,
             **options: Any) -> Callable[[Any], Any]:
    """``@app.periodic(every=60)`` / ``@app.periodic(cron="0 3 * * *", timezone="Europe/Berlin")``.

    On a plain function it registers the task too (``@app.task`` with defaults); on a registered
    task (stacked above ``@app.task(...)``) it adds a schedule. The schedule is named after the task
    unless ``name`` says otherwise; ``options`` are the other fields of the wire form (``timezone``,
    ``overlap``, ``catchup``, ``catchup_window``, ``max_attempts``, ``timeout``).
    """
    def declare(target: Any) -> Any:
        from .app import TaskDef

        tdef = target if isinstance(target, TaskDef) else app.task(target)
        schedule = {"name": name or tdef.name, "task": tdef.name, "args": list(args), "kwargs": kwargs or {},
                    "queue": tdef.options.queue, "cron": cron, "every": every, "source": "code", **options}
        checked = validate_schedule({k: v for k, v in schedule.items() if v is not None})
        if checked["name"] in app.schedules:
            raise ConfigError(f"a schedule named {checked['name']!r} is already declared")
        app.schedules[checked["name"]] = checked
        return tdef

    return declare


class Registrar:
    """Puts an app's declared schedules to the coordinator, until each is acknowledged or ``stopped``."""

    def __init__(self, settings: Settings, schedules: dict[str, dict[str, Any]], stopped: threading.Event,
                 put: Callable[[Settings, dict[str, Any], float], dict[str, Any]] = put_schedule) -> None:
        self._settings = settings
        self._waiting = dict(schedules)
        self._stopped = stopped
        self._put = put
        self.done = threading.Event()

    def run(self) -> None:
        rounds = 0
        while self._waiting and not self._stopped.is_set():
            for schedule_name, schedule in list(self._waiting.items()):
                if self._register(schedule_name, schedule) is False:
                    break  # no coordinator answered: wait, then try again
            if self._waiting:
                if rounds == 0:
                    log.info("schedules: no coordinator answered yet; %d schedule(s) will be registered when "
                             "one does", len(self._waiting))
                self._stopped.wait(REGISTER_RETRY_S[min(rounds, len(REGISTER_RETRY_S) - 1)])
                rounds += 1
        self.done.set()

    def _register(self, schedule_name: str, schedule: dict[str, Any]) -> bool | None:
        try:
            answer = self._put(self._settings, schedule, 2.0)
        except CoordinatorTimeoutError:
            return False
        except MqttTasksError as exc:
            log.error("schedules: the coordinator refused schedule %s: %s", schedule_name, exc)
            self._waiting.pop(schedule_name)  # a refusal is final; the next start tries again
            return None
        self._waiting.pop(schedule_name)
        log.info("schedules: %s %s", schedule_name, "created" if answer.get("created") else
                 "updated" if answer.get("changed") else "already registered")
        return True
