"""The firing policy with a fake clock: fire times, on time or missed, catch-up, overlap."""

from __future__ import annotations

import datetime as dt

import pytest

from mqtt_tasks import scheduling
from mqtt_tasks.scheduling import fire_id, next_fire, plan, start
from mqtt_tasks.store.schedules import ScheduleRecord

T0 = 1_700_000_000.0  # a multiple of 10 and of 60... of 20


def every(seconds: int, **kw: object) -> ScheduleRecord:
    s = ScheduleRecord(name="s", task="work", every=seconds, **kw)  # type: ignore[arg-type]
    start(s, T0)
    return s


def test_every_fires_at_multiples_of_the_period_since_the_epoch() -> None:
    s = every(60)
    assert s.next_fire == T0 + 40  # 1_700_000_040 is a multiple of 60
    assert next_fire(s, T0 + 40) == T0 + 100
    assert next_fire(every(1), T0 + 0.5) == T0 + 1


def test_cron_next_fire_reads_the_schedule_s_zone() -> None:
    s = ScheduleRecord(name="s", task="t", cron="0 9 * * *", timezone="Asia/Tokyo")
    assert next_fire(s, dt.datetime(2025, 1, 9, 12, tzinfo=dt.timezone.utc).timestamp()) == \
        dt.datetime(2025, 1, 10, tzinfo=dt.timezone.utc).timestamp()


def test_fire_ids_are_deterministic_and_valid_task_ids() -> None:
    from mqtt_tasks.protocol.topics import is_valid_id

    ident = fire_id("nightly", dt.datetime(2025, 3, 9, 7, tzinfo=dt.timezone.utc).timestamp())
    assert ident == "nightly:2025-03-09T07:00:00Z" and is_valid_id(ident)
    assert is_valid_id(fire_id("x" * 100, T0))


def test_a_new_schedule_never_fires_for_the_past() -> None:
    s = every(10)
    assert plan(s, T0, busy=False).run == []
    assert s.last_fire == T0


def test_on_time_fires_run_once_each() -> None:
    s = every(10)
    assert plan(s, T0 + 10.05, busy=False).run == [T0 + 10]
    assert plan(s, T0 + 10.1, busy=False).run == []  # judged already
    assert plan(s, T0 + 20.2, busy=False).run == [T0 + 20]
    assert s.next_fire == T0 + 30 and s.skipped == 0


def downtime(catchup: str, window: float = 3600.0, overlap: str = "allow_all") -> tuple[list[float], list[float]]:
    """Last judged at T0; the coordinator comes back at T0 + 50.3 (fires at +10..+50 due)."""
    s = every(10, catchup=catchup, catchup_window=window, overlap=overlap)
    p = plan(s, T0 + 50.3, busy=False)
    assert s.last_fire == T0 + 50 and s.next_fire == T0 + 60
    return [f - T0 for f in p.run], [f - T0 for f in p.skipped]


def test_catchup_none_runs_only_what_is_on_time() -> None:
    assert downtime("none") == ([50], [10, 20, 30, 40])


def test_catchup_last_runs_the_most_recent_due_fire() -> None:
    assert downtime("last") == ([50], [10, 20, 30, 40])
    s = every(10, catchup="last")
    p = plan(s, T0 + 47, busy=False)  # +40 is 7 s late: missed (half the period is 5 s), and the latest
    assert p.run == [T0 + 40] and p.skipped == [T0 + 10, T0 + 20, T0 + 30]


def test_catchup_none_skips_a_missed_fire_even_when_it_is_the_only_one() -> None:
    s = every(10, catchup="none")
    p = plan(s, T0 + 17, busy=False)
    assert p.run == [] and p.skipped == [T0 + 10] and s.skipped == 1


def test_catchup_all_runs_every_missed_fire_within_the_window() -> None:
    assert downtime("all") == ([10, 20, 30, 40, 50], [])
    assert downtime("all", window=25) == ([30, 40, 50], [])  # +10, +20 are older than the window: never judged
    assert downtime("all", overlap="skip") == ([10], [20, 30, 40, 50])  # they would overlap the first


def test_catchup_all_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduling, "MAX_CATCHUP", 2)
    assert downtime("all") == ([30, 40, 50], [10, 20])


def test_the_grace_is_half_the_period_for_short_periods() -> None:
    s = every(1, catchup="none")
    assert plan(s, T0 + 1.4, busy=False).run == [T0 + 1]
    p = plan(s, T0 + 3.6, busy=False)  # +2 is 1.6 s late: missed; +3 0.6 s: missed too
    assert p.run == [] and p.skipped == [T0 + 2, T0 + 3]


def test_overlap_skip() -> None:
    s = every(10, overlap="skip")
    p = plan(s, T0 + 10.1, busy=True)
    assert p.run == [] and p.skipped == [T0 + 10]
    assert plan(s, T0 + 20.1, busy=False).run == [T0 + 20]


def test_overlap_buffer_one_runs_one_when_the_running_one_finishes() -> None:
    s = every(10, overlap="buffer_one")
    assert plan(s, T0 + 10.1, busy=True).run == []
    assert s.buffered == T0 + 10
    p = plan(s, T0 + 20.1, busy=True)
    assert p.run == [] and p.skipped == [T0 + 20] and s.buffered == T0 + 10  # one is buffered, no more
    p = plan(s, T0 + 25, busy=False)  # the running one finished
    assert p.run == [T0 + 10] and s.buffered is None
    p = plan(s, T0 + 30.1, busy=True)
    assert p.run == [] and s.buffered == T0 + 30


def test_overlap_buffer_one_with_several_due_at_once() -> None:
    s = every(10, overlap="buffer_one", catchup="all")
    p = plan(s, T0 + 30.2, busy=False)
    assert p.run == [T0 + 10] and s.buffered == T0 + 20 and p.skipped == [T0 + 30]


def test_overlap_allow_all_ignores_what_runs() -> None:
    s = every(10, overlap="allow_all")
    assert plan(s, T0 + 10.1, busy=True).run == [T0 + 10]
