"""The policy of periodic tasks as pure functions of (schedule, now, busy): which fire times run.

No clock, no I/O: the coordinator (coordinator/schedules.py) calls ``plan`` with its clock and
carries out the plan; tests call it with a fake clock (tests/test_scheduling.py).

Built on these facts (docs/scheduling.md):

- A schedule fires at instants: ``every`` N seconds at the multiples of N since the epoch (so
  every coordinator, and every restart, computes the same instants), or at the wall-clock times of
  a ``cron`` expression in its ``timezone`` (``cron.Cron.next_fire``, with its daylight-saving rule).
- ``last_fire`` is the latest fire time judged: every fire time up to it ran or was skipped. It is
  committed with the task records of the fires, before they are published, so a restart never
  judges a fire time twice; the fire's task id (``fire_id``) is deterministic besides, so a fire
  published twice is still one task.
- A due fire is *on time* when it is at most ``grace`` late: ``LATE_S``, or half the gap to the
  next fire time when that is shorter (an ``every 1`` schedule half a second late is missed). A
  fire that is later than that was *missed* (the coordinator was down, or stalled): the catch-up
  policy decides whether it runs. Missed fires older than ``catchup_window`` never run.
- Catch-up, after Temporal's catch-up window: ``none`` (missed fires are skipped), ``last`` (only
  the most recent due fire runs), ``all`` (every missed fire within the window runs, at most
  ``MAX_CATCHUP``).
- Overlap, named as Temporal's schedule overlap policies: ``skip`` (a fire while an earlier fire's
  task is unfinished is skipped), ``buffer_one`` (one such fire waits and runs when the earlier one
  finishes; more are skipped), ``allow_all`` (every fire runs at once).
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from dataclasses import dataclass, field

from . import cron
from .store.schedules import ScheduleRecord

OVERLAPS = ("skip", "buffer_one", "allow_all")
CATCHUPS = ("none", "last", "all")
LATE_S = 10.0
"""A due fire later than this (or than half its period, if shorter) was missed."""
MAX_CATCHUP = 100
"""At most this many missed fires run on catch-up ``all``."""
MAX_CATCHUP_WINDOW = 7 * 86400.0
"""The longest catch-up window: how far back a restarted coordinator looks for missed fires."""


@dataclass
class Plan:
    """What to do now: the fire times to run, in order, and the ones skipped."""

    run: list[float] = field(default_factory=list)
    skipped: list[float] = field(default_factory=list)


@functools.lru_cache(maxsize=256)
def _cron(expression: str) -> cron.Cron:
    return cron.parse(expression)


def next_fire(schedule: ScheduleRecord, after: float) -> float | None:
    """The schedule's first fire instant strictly after ``after`` (None: never)."""
    if schedule.every:
        return float((math.floor(after / schedule.every) + 1) * schedule.every)
    if schedule.cron:
        return _cron(schedule.cron).next_fire(after, schedule.timezone)
    return None


def fire_id(name: str, fire: float) -> str:
    """The deterministic task id of one fire: ``{schedule}:{UTC ISO 8601 time}``."""
    stamp = dt.datetime.fromtimestamp(fire, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{name}:{stamp}"


def due_fires(schedule: ScheduleRecord, now: float) -> list[float]:
    """The fire times after ``last_fire`` and up to ``now`` that could still run (within the window
    or on time), oldest first."""
    start = max(schedule.last_fire, now - max(schedule.catchup_window, LATE_S))
    fires: list[float] = []
    fire = next_fire(schedule, start)
    while fire is not None and fire <= now:
        fires.append(fire)
        fire = next_fire(schedule, fire)
    return fires


def on_time(schedule: ScheduleRecord, fires: list[float], now: float) -> set[float]:
    """The fires at most ``grace`` late (``LATE_S``, or half the gap to the next fire if shorter)."""
    found: set[float] = set()
    for index in range(len(fires) - 1, -1, -1):
        fire = fires[index]
        if now - fire > LATE_S:
            break
        following = fires[index + 1] if index + 1 < len(fires) else next_fire(schedule, fire)
        grace = min(LATE_S, (following - fire) / 2) if following is not None else LATE_S
        if now - fire <= grace:
            found.add(fire)
    return found


def candidates(schedule: ScheduleRecord, fires: list[float], now: float) -> list[float]:
    """The due fires the catch-up policy lets run, oldest first."""
    timely = on_time(schedule, fires, now)
    window = [f for f in fires if f in timely or now - f <= schedule.catchup_window]
    if schedule.catchup == "last":
        return window[-1:] if window and window[-1] == fires[-1] else []
    if schedule.catchup == "all":
        missed = [f for f in window if f not in timely]
        return missed[-MAX_CATCHUP:] + [f for f in window if f in timely]
    return [f for f in fires if f in timely]


def plan(schedule: ScheduleRecord, now: float, busy: bool) -> Plan:
    """Judge every fire due by ``now`` (``busy``: an earlier fire's task is unfinished).

    Updates the schedule's ``last_fire``, ``next_fire``, ``buffered`` and ``skipped``; the caller
    runs ``Plan.run`` and records them.
    """
    result = Plan()
    if schedule.buffered is not None and not busy:
        result.run.append(schedule.buffered)
        schedule.buffered = None
        busy = True
    fires = due_fires(schedule, now)
    allowed = candidates(schedule, fires, now) if fires else []
    result.skipped = [f for f in fires if f not in allowed]
    for fire in allowed:
        if schedule.overlap == "allow_all" or not busy:
            result.run.append(fire)
            busy = True
        elif schedule.overlap == "buffer_one" and schedule.buffered is None:
            schedule.buffered = fire
        else:
            result.skipped.append(fire)
    if fires:
        schedule.last_fire = fires[-1]
    schedule.next_fire = next_fire(schedule, max(now, schedule.last_fire))
    schedule.skipped += len(result.skipped)
    return result


def start(schedule: ScheduleRecord, now: float) -> None:
    """A new or redefined schedule: fire times from now on, none from the past."""
    schedule.last_fire = max(schedule.last_fire, now)
    schedule.next_fire = next_fire(schedule, schedule.last_fire)
