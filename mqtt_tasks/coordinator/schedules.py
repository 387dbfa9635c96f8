"""Schedules: the periodic tasks the coordinator holds, and their firing, on the loop's thread.

Built on these facts (docs/scheduling.md; the policy is ``mqtt_tasks.scheduling``):

- Schedules are kept in the store (``Store.put_schedule``) and managed with the ``schedule.put``,
  ``schedule.list`` and ``schedule.rm`` queries on the query topic (``ops``); a put of the same
  definition changes nothing, so every worker of an app can register its declared schedules.
- The loop calls ``tick`` after every batch while online; it costs one comparison until the
  earliest next fire (or a buffered fire) is due.
- A fire is a task with the deterministic id ``{schedule}:{UTC time}`` (``scheduling.fire_id``).
  Its task record and the schedule's ``last_fire`` are put in the store in the same batch, and
  the loop commits before it publishes the task on ``P/tasks/{queue}``: a coordinator killed
  before the commit fires it again (it was never published), one killed after finds it judged.
  A fire whose task record exists already is not published again.
- A fire that was committed but whose publish was lost (a crash between commit and publish, a
  broker that dropped it) is a ``queued`` record like any other: its dispatch timer sends it to a
  worker (``leases.on_timer``). So a fire is never lost and never doubled.
- Overlap is judged on the fired tasks still live (``active``): a task that is not finished is in
  ``Records.live``, also after a restart.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from .. import leases, scheduling
from ..errors import ConfigError
from ..protocol import codec
from ..schedules import validate_schedule
from ..store.schedules import DEFINITION, ScheduleRecord

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..config import Settings
    from ..leases import LeasePolicy
    from ..protocol.topics import Topics
    from .effects import Effects
    from .records import Records

log = logging.getLogger(__name__)

_NEVER = float("inf")


class Schedules:
    """The schedules by name, their ``schedule.*`` queries, and the firing of what is due."""

    def __init__(self, settings: Settings, topics: Topics, records: Records, effects: Effects,
                 policy: LeasePolicy, clock: Callable[[], float], stats: dict[str, int]) -> None:
        self._settings = settings
        self._topics = topics
        self._records = records
        self._effects = effects
        self._policy = policy
        self._clock = clock
        self._stats = stats
        stats.setdefault("fired", 0)
        self.by_name: dict[str, ScheduleRecord] = {}
        self._wake = _NEVER
        self.ops: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "schedule.put": self.op_put, "schedule.list": self.op_list, "schedule.rm": self.op_rm}

    def recover(self) -> int:
        """Load the schedules from the store; their missed fires are judged at the first tick."""
        for schedule in self._records.store.load_schedules():
            self.by_name[schedule.name] = schedule
        self._rewake()
        return len(self.by_name)

    # -- queries ---------------------------------------------------------------------------
    def op_put(self, request: dict[str, Any]) -> dict[str, Any]:
        data = request.get("schedule")
        if not isinstance(data, dict):
            return {"ok": False, "error": "schedule.put needs a 'schedule' object"}
        try:
            definition = validate_schedule(data)
        except ConfigError as exc:
            return {"ok": False, "error": str(exc)}
        now = self._clock()
        current = self.by_name.get(definition["name"])
        created = current is None
        schedule = current or ScheduleRecord(name=definition["name"], task=definition["task"], created=now)
        fresh = ScheduleRecord(**{k: v for k, v in definition.items() if k in DEFINITION})
        changed = created or schedule.definition() != fresh.definition()
        if changed:
            for name in DEFINITION:
                setattr(schedule, name, getattr(fresh, name))
            schedule.source, schedule.updated = definition.get("source"), now
            scheduling.start(schedule, now)
            self.by_name[schedule.name] = schedule
            self._records.store.put_schedule(schedule)
            self._rewake()
            log.info("coordinator: schedule %s %s (%s), next fire %s", schedule.name,
                     "created" if created else "updated", _timing(schedule), _when(schedule.next_fire))
        return {"ok": True, "created": created, "changed": changed, "schedule": view(schedule)}

    def op_list(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "schedules": [view(s) for _, s in sorted(self.by_name.items())]}

    def op_rm(self, request: dict[str, Any]) -> dict[str, Any]:
        name = request.get("name")
        schedule = self.by_name.pop(name, None) if isinstance(name, str) else None
        if schedule is None:
            return {"ok": False, "not_found": True, "error": f"no schedule named {name!r}"}
        self._records.store.delete_schedule(schedule.name)
        self._rewake()
        log.info("coordinator: schedule %s removed", schedule.name)
        return {"ok": True, "schedule": view(schedule)}

    # -- firing ----------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Fire what is due at ``now`` (called by the loop while online)."""
        if now < self._wake:
            return
        for schedule in list(self.by_name.values()):
            if schedule.buffered is not None or (schedule.next_fire is not None and schedule.next_fire <= now):
                self._judge(schedule, now)
        self._rewake()

    def _judge(self, schedule: ScheduleRecord, now: float) -> None:
        live = self._records.live
        schedule.active = [task_id for task_id in schedule.active if task_id in live]
        before = (schedule.last_fire, schedule.buffered, schedule.next_fire)
        plan = scheduling.plan(schedule, now, busy=bool(schedule.active))
        for fire in plan.run:
            self._fire(schedule, fire, now)
        if plan.skipped:
            log.info("coordinator: schedule %s skipped %d fire(s) (overlap %s, catch-up %s), the latest %s",
                     schedule.name, len(plan.skipped), schedule.overlap, schedule.catchup, _when(plan.skipped[-1]))
        if plan.run or plan.skipped or before != (schedule.last_fire, schedule.buffered, schedule.next_fire):
            schedule.updated = now
            self._records.store.put_schedule(schedule)

    def _fire(self, schedule: ScheduleRecord, fire: float, now: float) -> None:
        task_id = scheduling.fire_id(schedule.name, fire)
        if self._records.get(task_id) is not None:
            log.info("coordinator: schedule %s: fire %s was recorded already; not again", schedule.name, task_id)
            return
        body: dict[str, Any] = {"id": task_id, "task": schedule.task, "args": list(schedule.args),
                                "kwargs": dict(schedule.kwargs), "attempt": 1, "queue": schedule.queue,
                                "schedule": schedule.name, "scheduled_for": fire}
        if schedule.max_attempts is not None:
            body["max_attempts"] = schedule.max_attempts
        if schedule.timeout is not None:
            body["timeout"] = schedule.timeout
        record = self._records.get_or_create(task_id, task=schedule.task, queue=schedule.queue)
        self._records.save(record, leases.on_task(record, body, now, self._policy))
        schedule.active.append(task_id)
        schedule.fired += 1
        schedule.last_task = task_id
        self._stats["fired"] += 1
        key = getattr(self._settings, "signing_key", None)
        if key is not None:
            from .. import signing

            body = signing.sign(body, key)
        self._effects.send(self._topics.tasks(schedule.queue), codec.encode(body))
        log.info("coordinator: schedule %s fired task %s (%.1f s after its time)", schedule.name, task_id,
                 now - fire)

    def _rewake(self) -> None:
        wake = _NEVER
        for schedule in self.by_name.values():
            if schedule.buffered is not None:
                wake = 0.0  # judged every tick until the running fire finishes
                break
            if schedule.next_fire is not None:
                wake = min(wake, schedule.next_fire)
        self._wake = wake


def view(schedule: ScheduleRecord) -> dict[str, Any]:
    """A schedule as the ``schedule.*`` queries answer it: the definition and the bookkeeping."""
    return {k: v for k, v in schedule.to_dict().items() if v is not None}


def _timing(schedule: ScheduleRecord) -> str:
    if schedule.every:
        return f"every {schedule.every} s"
    return f"cron {schedule.cron!r} in {schedule.timezone}"


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
