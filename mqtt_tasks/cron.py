"""Cron expressions: parse five fields, match wall-clock times, find the next fire in a time zone.

Pure: no clock, no I/O. The dialect is Vixie cron's (the one in Debian's ``cron``, crontab(5)):

- five fields: minute (0-59), hour (0-23), day of month (1-31), month (1-12 or ``jan``-``dec``),
  day of week (0-7, 0 and 7 both Sunday, or ``sun``-``sat``); names are case-insensitive;
- each field is a comma-separated list of ``*``, ``N``, ``N-M``, each optionally ``/STEP``;
  ``N/STEP`` means ``N-max/STEP`` (a common extension);
- macros ``@yearly`` (``@annually``), ``@monthly``, ``@weekly``, ``@daily`` (``@midnight``),
  ``@hourly``; ``@reboot`` has no meaning for a coordinator and is refused;
- the day rule: when both day of month and day of week are restricted (neither starts with
  ``*``), a day matches if *either* matches; otherwise both must (``0 0 1 * 1``: the 1st and every
  Monday; ``0 0 */2 * 1``: odd days that are Mondays, as in Vixie cron).

Time zones and daylight saving (``next_fire``), the rule documented in docs/scheduling.md:

- fire times are wall-clock times in the schedule's zone, and a fire is an instant (epoch s);
- a wall time that does not exist (the skipped hour of a spring-forward day: 02:30 in
  Europe/Berlin on the last Sunday of March) fires once, at the instant the gap ends (03:00
  local), as Vixie cron runs such jobs right after the change; several skipped times collapse
  into that one fire;
- a wall time that happens twice (the repeated hour of a fall-back day: 01:30 in
  America/New_York on the first Sunday of November) fires once, at its first occurrence.

Errors are ``CronError`` (a ``ConfigError``, so a ``ValueError``) naming the bad field.
"""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from .errors import CronError

FIELDS = ("minute", "hour", "day of month", "month", "day of week")
_BOUNDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_MONTHS = {name: i for i, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}
_DAYS = {name: i for i, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
_NAMES: tuple[dict[str, int], ...] = ({}, {}, {}, _MONTHS, _DAYS)
MACROS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}
SEARCH_YEARS = 5
"""How far ``next_wall_time`` looks before it says a (valid) expression never fires again."""


@dataclass(frozen=True)
class Cron:
    """A parsed expression: the allowed values of each field, and whether each day field is ``*``."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0-6, Sunday 0
    dom_star: bool
    dow_star: bool

    def day_matches(self, day: dt.date) -> bool:
        """Vixie cron's day rule: OR when both day fields are restricted, else AND."""
        in_dom = day.day in self.days
        in_dow = (day.isoweekday() % 7) in self.weekdays
        if self.dom_star or self.dow_star:
            return in_dom and in_dow
        return in_dom or in_dow

    def matches(self, wall: dt.datetime) -> bool:
        """Whether a (naive) wall-clock time is a fire time."""
        return (wall.minute in self.minutes and wall.hour in self.hours and wall.month in self.months
                and self.day_matches(wall.date()))

    def next_wall_time(self, after: dt.datetime) -> dt.datetime | None:
        """The first matching naive wall time strictly after ``after`` (None: not within SEARCH_YEARS)."""
        wall = after.replace(second=0, microsecond=0, tzinfo=None) + dt.timedelta(minutes=1)
        limit = wall + dt.timedelta(days=366 * SEARCH_YEARS)
        while wall < limit:
            if wall.month not in self.months:
                wall = _first_of_next_month(wall)
            elif not self.day_matches(wall.date()):
                wall = dt.datetime.combine(wall.date() + dt.timedelta(days=1), dt.time())
            elif wall.hour not in self.hours:
                wall = wall.replace(minute=0) + dt.timedelta(hours=1)
            elif wall.minute not in self.minutes:
                wall += dt.timedelta(minutes=1)
            else:
                return wall
        return None

    def next_fire(self, after: float, zone: str | dt.tzinfo = "UTC") -> float | None:
        """The first fire instant (epoch seconds) strictly after ``after``, judged on the wall clock of
        ``zone`` with the daylight-saving rule of the module docstring."""
        tz = ZoneInfo(zone) if isinstance(zone, str) else zone
        wall = dt.datetime.fromtimestamp(after, tz).replace(tzinfo=None)
        while True:
            wall_next = self.next_wall_time(wall)
            if wall_next is None:
                return None
            instant = wall_instant(wall_next, tz)
            if instant > after:
                return instant
            wall = wall_next  # a skipped time whose gap end is not after ``after``, or a repeat


def wall_instant(wall: dt.datetime, tz: dt.tzinfo) -> float:
    """The instant of a naive wall time in ``tz``: its first occurrence when it happens twice, the
    end of the gap when it does not happen at all."""
    first = wall.replace(tzinfo=tz, fold=0)
    instant = first.timestamp()
    if dt.datetime.fromtimestamp(instant, tz).replace(tzinfo=None) == wall:
        return instant
    # In a gap: fold=0 reads it with the offset before the change (an instant after the gap),
    # fold=1 with the offset after it (an instant before the gap). The change lies between.
    low, high = int(wall.replace(tzinfo=tz, fold=1).timestamp()), int(instant)
    before = tz.utcoffset(dt.datetime.fromtimestamp(low, tz))
    while high - low > 1:
        mid = (low + high) // 2
        if tz.utcoffset(dt.datetime.fromtimestamp(mid, tz)) == before:
            low = mid
        else:
            high = mid
    return float(high)


def _first_of_next_month(wall: dt.datetime) -> dt.datetime:
    year, month = (wall.year + 1, 1) if wall.month == 12 else (wall.year, wall.month + 1)
    return dt.datetime(year, month, 1)


def parse(text: str) -> Cron:
    """Parse an expression or macro; raise ``CronError`` naming the bad field."""
    if not isinstance(text, str):
        raise CronError(f"a cron expression is a string, not {type(text).__name__}")
    source = text.strip()
    expanded = MACROS.get(source.lower(), source)
    if expanded.startswith("@"):
        raise CronError(f"invalid cron expression {text!r}: unknown macro {source!r} "
                        f"(use {', '.join(sorted(MACROS))})")
    parts = expanded.split()
    if len(parts) != 5:
        raise CronError(f"invalid cron expression {text!r}: {len(parts)} field(s), expected 5 "
                        "(minute hour day-of-month month day-of-week) or a macro such as @hourly")
    values = [_field(text, index, part) for index, part in enumerate(parts)]
    cron = Cron(source, values[0], values[1], values[2], values[3], frozenset(v % 7 for v in values[4]),
                dom_star=parts[2].startswith("*"), dow_star=parts[4].startswith("*"))
    _check_some_day_exists(text, cron)
    return cron


def _field(text: str, index: int, part: str) -> frozenset[int]:
    values: set[int] = set()
    for item in part.split(","):
        try:
            values.update(_item(item, index))
        except ValueError as exc:
            raise CronError(f"invalid cron expression {text!r}: {FIELDS[index]} field {part!r}: {exc}") from None
    return frozenset(values)


def _item(item: str, index: int) -> range:
    low, high = _BOUNDS[index]
    base, slash, step_text = item.partition("/")
    step = 1
    if slash:
        if not step_text.isdigit() or int(step_text) == 0:
            raise ValueError(f"step {step_text!r} is not a positive whole number")
        step = int(step_text)
    if base == "*":
        return range(low, high + 1, step)
    first_text, dash, last_text = base.partition("-")
    first = _value(first_text, index)
    last = _value(last_text, index) if dash else (high if slash else first)
    if last < first:
        raise ValueError(f"range {base!r} runs backwards")
    return range(first, last + 1, step)


def _value(text: str, index: int) -> int:
    low, high = _BOUNDS[index]
    name = _NAMES[index].get(text.lower())
    if name is not None:
        return name
    if not text.isdigit():
        hint = f" or a name ({', '.join(_NAMES[index])})" if _NAMES[index] else ""
        raise ValueError(f"{text!r} is not a number{hint}" if text else "empty value")
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{value} is out of range {low}-{high}")
    return value


def _check_some_day_exists(text: str, cron: Cron) -> None:
    """Refuse ``0 0 30 2 *`` (February 30th): an expression that can never fire is a mistake."""
    if cron.dom_star or not cron.dow_star:
        return  # every day of month allowed, or weekdays can match on their own
    longest = max(calendar.monthrange(2024, month)[1] for month in cron.months)  # 2024: a leap year
    if min(cron.days) > longest:
        raise CronError(f"invalid cron expression {text!r}: day of month field: no month of "
                        f"{sorted(cron.months)} has day {min(cron.days)}")
