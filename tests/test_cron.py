"""The cron parser, exhaustively: every field, every syntax, the day rule, macros, errors naming
the bad field; next fire times checked against brute force; daylight saving in two zones."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from mqtt_tasks.cron import MACROS, parse, wall_instant
from mqtt_tasks.errors import ConfigError, CronError

UTC = dt.timezone.utc


def utc(*args: int) -> float:
    return dt.datetime(*args, tzinfo=UTC).timestamp()


def iso(ts: float | None) -> str:
    assert ts is not None
    return dt.datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


# -- syntax -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "attr", "values"), [
    ("* * * * *", "minutes", set(range(60))),
    ("5 * * * *", "minutes", {5}),
    ("1,2,59 * * * *", "minutes", {1, 2, 59}),
    ("10-15 * * * *", "minutes", set(range(10, 16))),
    ("*/15 * * * *", "minutes", {0, 15, 30, 45}),
    ("10-30/10 * * * *", "minutes", {10, 20, 30}),
    ("50/5 * * * *", "minutes", {50, 55}),
    ("0-5,*/30,7 * * * *", "minutes", {0, 1, 2, 3, 4, 5, 7, 30}),
    ("* 0-23/6 * * *", "hours", {0, 6, 12, 18}),
    ("* 23 * * *", "hours", {23}),
    ("* * 1,15,31 * *", "days", {1, 15, 31}),
    ("* * */10 * *", "days", {1, 11, 21, 31}),
    ("* * * jan,JUL,Dec *", "months", {1, 7, 12}),
    ("* * * mar-may *", "months", {3, 4, 5}),
    ("* * * */3 *", "months", {1, 4, 7, 10}),
    ("* * * * mon-fri", "weekdays", {1, 2, 3, 4, 5}),
    ("* * * * 0", "weekdays", {0}),
    ("* * * * 7", "weekdays", {0}),
    ("* * * * 5-7", "weekdays", {5, 6, 0}),
    ("* * * * SUN,sat", "weekdays", {0, 6}),
])
def test_each_field_and_syntax(text: str, attr: str, values: set[int]) -> None:
    assert set(getattr(parse(text), attr)) == values


@pytest.mark.parametrize(("macro", "same_as"), sorted(MACROS.items()))
def test_macros_are_their_expansions(macro: str, same_as: str) -> None:
    a, b = parse(macro), parse(same_as)
    assert (a.minutes, a.hours, a.days, a.months, a.weekdays) == (b.minutes, b.hours, b.days, b.months, b.weekdays)
    assert parse(macro.upper()).minutes == a.minutes


@pytest.mark.parametrize(("text", "field", "why"), [
    ("60 * * * *", "minute field", "60 is out of range 0-59"),
    ("* 24 * * *", "hour field", "24 is out of range 0-23"),
    ("* * 0 * *", "day of month field", "0 is out of range 1-31"),
    ("* * 32 * *", "day of month field", "out of range"),
    ("* * * 13 *", "month field", "13 is out of range 1-12"),
    ("* * * * 8", "day of week field", "8 is out of range 0-7"),
    ("* * * foo *", "month field", "is not a number or a name"),
    ("* * * * funday", "day of week field", "is not a number or a name"),
    ("*/0 * * * *", "minute field", "step '0'"),
    ("*/x * * * *", "minute field", "step 'x'"),
    ("5-1 * * * *", "minute field", "runs backwards"),
    ("1,,2 * * * *", "minute field", "empty value"),
    ("-5 * * * *", "minute field", "empty value"),
    ("1.5 * * * *", "minute field", "not a number"),
    ("0 0 30 2 *", "day of month field", "no month"),
    ("0 0 31 4,6 *", "day of month field", "no month"),
])
def test_a_bad_field_is_named(text: str, field: str, why: str) -> None:
    with pytest.raises(CronError) as info:
        parse(text)
    message = str(info.value)
    assert field in message and why in message and repr(text) in message
    assert "\n" not in message and isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("text", ["", "* * * *", "* * * * * *", "@reboot", "@every5m"])
def test_bad_shapes_and_macros(text: str) -> None:
    with pytest.raises(CronError, match="field|macro"):
        parse(text)


def test_february_29th_and_31st_of_some_months_are_allowed() -> None:
    assert parse("0 0 29 2 *").days == {29}
    assert parse("0 0 31 * *").days == {31}
    assert parse("0 0 30 2 1").days == {30}  # day of week can match on its own


# -- the day rule (Vixie cron) ----------------------------------------------------------------
def test_both_day_fields_restricted_match_either() -> None:
    c = parse("0 0 1 * 1")  # the 1st, and every Monday
    assert c.day_matches(dt.date(2025, 1, 1))  # a Wednesday, the 1st
    assert c.day_matches(dt.date(2025, 1, 6))  # a Monday
    assert not c.day_matches(dt.date(2025, 1, 7))


def test_a_star_day_field_means_both_must_match() -> None:
    c = parse("0 0 */2 * 1")  # starts with *: odd days that are Mondays
    assert c.day_matches(dt.date(2025, 1, 13))  # Monday the 13th
    assert not c.day_matches(dt.date(2025, 1, 6))  # Monday the 6th
    assert not c.day_matches(dt.date(2025, 1, 15))  # Wednesday the 15th
    assert parse("0 0 13 * *").day_matches(dt.date(2025, 1, 13))
    assert parse("0 0 * * fri").day_matches(dt.date(2025, 6, 13))


# -- next fire: against brute force -----------------------------------------------------------
def _brute_next(text: str, after: dt.datetime) -> dt.datetime:
    c = parse(text)
    wall = after.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    while not c.matches(wall):
        wall += dt.timedelta(minutes=1)
    return wall


EXPRESSIONS = ["* * * * *", "*/7 * * * *", "0 */5 * * *", "30 4 1,15 * *", "0 0 * * 0", "15 10 * * mon-fri",
               "0 12 1 * 1", "0 0 */2 * 1", "59 23 31 12 *", "0 0 29 2 *", "5-10/2 3 * jun-aug sat,sun",
               "@hourly", "@monthly", "0 0 13 * fri"]


@pytest.mark.parametrize("text", EXPRESSIONS)
def test_next_wall_time_is_the_first_match(text: str) -> None:
    rng = random.Random(text)
    c = parse(text)
    for _ in range(20):
        after = dt.datetime(2023, 1, 1) + dt.timedelta(minutes=rng.randrange(3 * 365 * 1440), seconds=rng.randrange(60))
        expected = _brute_next(text, after) if text not in ("0 0 29 2 *", "59 23 31 12 *") else None
        got = c.next_wall_time(after)
        assert got is not None and c.matches(got) and got > after
        if expected is not None:
            assert got == expected


def test_next_fire_in_utc_and_chained() -> None:
    c = parse("*/20 * * * *")
    t = utc(2025, 1, 1, 0, 5)
    fires = []
    for _ in range(4):
        t = c.next_fire(t)  # type: ignore[assignment]
        fires.append(iso(t))
    assert fires == ["2025-01-01 00:20", "2025-01-01 00:40", "2025-01-01 01:00", "2025-01-01 01:20"]
    assert parse("0 0 29 2 *").next_fire(utc(2025, 3, 1)) == utc(2028, 2, 29)


def test_a_time_zone_moves_the_instant() -> None:
    assert iso(parse("0 9 * * *").next_fire(utc(2025, 1, 9, 12), "Asia/Tokyo")) == "2025-01-10 00:00"
    assert iso(parse("0 9 * * *").next_fire(utc(2025, 7, 10), "America/New_York")) == "2025-07-10 13:00"


# -- daylight saving --------------------------------------------------------------------------
def test_spring_forward_a_skipped_0230_fires_once_when_the_gap_ends() -> None:
    c = parse("30 2 * * *")
    # New York, 2025-03-09: 02:00 EST -> 03:00 EDT (07:00Z); 02:30 does not exist
    first = c.next_fire(utc(2025, 3, 8, 12), "America/New_York")
    assert iso(first) == "2025-03-09 07:00"  # 03:00 EDT, the end of the gap
    assert iso(c.next_fire(first, "America/New_York")) == "2025-03-10 06:30"  # 02:30 EDT the next day
    # Berlin, 2025-03-30: 02:00 CET -> 03:00 CEST (01:00Z)
    first = c.next_fire(utc(2025, 3, 29, 12), "Europe/Berlin")
    assert iso(first) == "2025-03-30 01:00"
    assert iso(c.next_fire(first, "Europe/Berlin")) == "2025-03-31 00:30"


def test_spring_forward_several_skipped_times_collapse_into_one_fire() -> None:
    c = parse("*/30 * * * *")
    t, fires = utc(2025, 3, 9, 6, 15), []
    for _ in range(4):
        t = c.next_fire(t, "America/New_York")  # type: ignore[assignment]
        fires.append(iso(t))
    # 01:30 EST, then 02:00 / 02:30 / 03:00 local all at 07:00Z, once; then 03:30 EDT
    assert fires == ["2025-03-09 06:30", "2025-03-09 07:00", "2025-03-09 07:30", "2025-03-09 08:00"]


def test_fall_back_a_repeated_0130_fires_once_at_its_first_occurrence() -> None:
    c = parse("30 1 * * *")
    # New York, 2025-11-02: 02:00 EDT -> 01:00 EST (06:00Z); 01:30 happens at 05:30Z and 06:30Z
    first = c.next_fire(utc(2025, 11, 1, 12), "America/New_York")
    assert iso(first) == "2025-11-02 05:30"
    assert iso(c.next_fire(first, "America/New_York")) == "2025-11-03 06:30"  # not 06:30Z the same day
    # Berlin, 2025-10-26: 03:00 CEST -> 02:00 CET; 02:30 happens at 00:30Z and 01:30Z
    c = parse("30 2 * * *")
    first = c.next_fire(utc(2025, 10, 25, 12), "Europe/Berlin")
    assert iso(first) == "2025-10-26 00:30"
    assert iso(c.next_fire(first, "Europe/Berlin")) == "2025-10-27 01:30"


def test_fall_back_an_hourly_schedule_does_not_repeat_the_wall_hour() -> None:
    c = parse("0 * * * *")
    t, fires = utc(2025, 11, 2, 4, 30), []
    for _ in range(3):
        t = c.next_fire(t, "America/New_York")  # type: ignore[assignment]
        fires.append(iso(t))
    assert fires == ["2025-11-02 05:00", "2025-11-02 07:00", "2025-11-02 08:00"]  # 01:00 EDT, 02:00 EST, ...


def test_wall_instant_in_a_gap_is_the_end_of_the_gap() -> None:
    from zoneinfo import ZoneInfo

    tz = ZoneInfo("Europe/Berlin")
    assert wall_instant(dt.datetime(2025, 3, 30, 2, 59), tz) == utc(2025, 3, 30, 1, 0)
    assert wall_instant(dt.datetime(2025, 3, 30, 1, 59), tz) == utc(2025, 3, 30, 0, 59)
