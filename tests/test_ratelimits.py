"""Rate limits as pure policy: the grammar, the sliding-window log with a fake clock, the
coordinator's gate over in-memory records and store, and the producer's checks (no broker)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from mqtt_tasks import leases
from mqtt_tasks.app import TaskApp, rate_fields
from mqtt_tasks.coordinator.ratelimits import RateGate
from mqtt_tasks.errors import ConfigError
from mqtt_tasks.protocol import messages, validate
from mqtt_tasks.protocol.rates import RateLimit, parse_rate_limit
from mqtt_tasks.ratelimits import RateLimiter, bucket_of, within
from mqtt_tasks.store.base import TaskRecord
from mqtt_tasks.store.memory import MemoryStore
from mqtt_tasks.worker.intake import RATE_LIMITED, judge


@pytest.mark.parametrize(("text", "count", "period"), [("10/s", 10, 1.0), ("100/m", 100, 60.0),
                                                        ("1000/h", 1000, 3600.0), ("5/10s", 5, 10.0),
                                                        ("1/24h", 1, 86400.0), ("10000/s", 10000, 1.0)])
def test_the_forms_parse(text: str, count: int, period: float) -> None:
    assert parse_rate_limit(text) == RateLimit(count, period, text)


@pytest.mark.parametrize("text", ["", "10", "10/", "/s", "0/s", "10/0s", "10/x", "-1/s", "1.5/s", "10/ s", " 10/s",
                                  "10/sec", "10001/s", "1/25h", "10/S", 10, None])
def test_a_malformed_rate_limit_is_refused_with_one_reason(text: Any) -> None:
    with pytest.raises(ValueError, match="rate limit") as info:
        parse_rate_limit(text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("fields", [{"rate_limit": "10/s"}, {"rate_limit": "10/s", "rate_key": "dev-1"},
                                    {"rate_limit": "10/x"}, {"rate_limit": 10}, {"rate_limit": "99999/s"},
                                    {"rate_key": "dev-1"}, {"rate_limit": "1/s", "rate_key": ""},
                                    {"rate_limit": "1/s", "rate_key": "k" * 257}, {"rate_limit": "1/s", "rate_key": 7},
                                    {"rate_limit": None}])
def test_both_validators_accept_and_refuse_the_same_rate_fields(fields: dict[str, Any]) -> None:
    body = {"id": "t1", "task": "send", **fields}
    try:
        validate.task(dict(body))
        fast = True
    except validate.Invalid:
        fast = False
    try:
        messages.Task.model_validate(body)
        model = True
    except ValueError:
        model = False
    assert fast == model


def test_the_window_admits_count_then_waits_for_the_oldest_to_age_out() -> None:
    limiter, limit, b = RateLimiter(), parse_rate_limit("3/s"), bucket_of("send", None)
    for now in (10.0, 10.1, 10.2):
        assert limiter.next_slot(b, limit, now) == now
        limiter.take(b, limit, now)
    assert limiter.next_slot(b, limit, 10.3) == pytest.approx(11.0)
    assert limiter.free(b, limit, 10.99) == 0
    assert limiter.next_slot(b, limit, 11.0) == 11.0 and limiter.free(b, limit, 11.0) == 1
    limiter.take(b, limit, 11.0)
    assert limiter.next_slot(b, limit, 11.0) == pytest.approx(11.1)


def test_keys_have_their_own_windows() -> None:
    limiter, limit = RateLimiter(), parse_rate_limit("1/m")
    limiter.take(bucket_of("send", "dev-a"), limit, 0.0)
    assert limiter.next_slot(bucket_of("send", "dev-a"), limit, 1.0) == 60.0
    assert limiter.next_slot(bucket_of("send", "dev-b"), limit, 1.0) == 1.0
    assert limiter.next_slot(bucket_of("other", "dev-a"), limit, 1.0) == 1.0


def test_a_clock_that_steps_back_only_slows_the_limit() -> None:
    limiter, limit, b = RateLimiter(), parse_rate_limit("2/s"), "b|"
    limiter.take(b, limit, 100.0)
    limiter.take(b, limit, 100.0)
    assert limiter.next_slot(b, limit, 95.0) == 101.0  # not "now": the times ahead still count


def test_dispatching_whenever_allowed_never_exceeds_the_limit_in_any_window() -> None:
    rng = random.Random(7)
    for text in ("3/s", "5/10s", "1/m"):
        limit, limiter, now, times = parse_rate_limit(text), RateLimiter(), 0.0, []
        for _ in range(300):
            now += rng.expovariate(4 * limit.count / limit.period)  # asked four times faster than allowed
            at = limiter.next_slot("b|", limit, now)
            now = max(now, at)
            limiter.take("b|", limit, now)
            times.append(now)
        assert within(times, limit)
        assert not within([t * 0.9 for t in times], limit)  # the check itself can fail: the limit is tight


def test_export_and_restore_carry_a_window_over_a_restart() -> None:
    limiter, limit = RateLimiter(), parse_rate_limit("2/10s")
    limiter.take("b|", limit, 100.0)
    limiter.take("b|", limit, 101.0)
    limiter.take("old|", limit, 10.0)
    data = {b: w for b in ("b|", "old|") if (w := limiter.export(b)) is not None}
    again = RateLimiter()
    again.restore(data, 102.0)
    assert again.next_slot("b|", limit, 102.0) == 110.0
    assert len(again) == 1  # the window aged out since is dropped
    assert again.expired(111.5) == ["b|"] and len(again) == 0


def _record(task_id: str, limit: str = "2/s", key: str | None = None, task: str = "send") -> TaskRecord:
    return TaskRecord(id=task_id, task=task, state="backlog", rate_limit=limit, rate_key=key)


def test_the_gate_parks_releases_by_priority_and_persists_its_windows() -> None:
    store = MemoryStore()
    gate = RateGate(store)
    a, b, c = _record("a"), _record("b"), _record("c")
    assert not gate.hold(a, "q", (-5, 1, "a"), 0.0)
    gate.took(a, 0.0)
    assert not gate.hold(b, "q", (-5, 2, "b"), 0.0)
    gate.took(b, 0.0)
    assert gate.hold(c, "q", (-5, 3, "c"), 0.1)
    assert gate.hold(_record("d"), "q", (-9, 4, "d"), 0.1)  # a higher priority, parked later
    assert gate.waiting("c") == {"limit": "2/s", "key": None, "next_at": 1.0}
    assert gate.parked == 2 and gate.release(0.5) == []
    gate.settle(0.5)
    assert gate.release(1.0) == [("q", (-9, 4, "d")), ("q", (-5, 3, "c"))]  # room for two: by priority
    gate.settle(1.0)
    assert gate.waiting("c") is None and gate.parked == 0
    assert not gate.hold(_record("x", limit="1/s", key="dev"), "q", (-5, 5, "x"), 1.0)  # another key: room
    store.commit()
    restarted = RateGate(store)
    assert restarted.recover(0.5) == 1
    assert restarted.hold(_record("e"), "q", (-5, 6, "e"), 0.5)  # the window survived: no burst


def test_a_bucket_whose_released_tasks_found_no_worker_is_looked_at_again() -> None:
    gate = RateGate(None)
    for i, now in enumerate((0.0, 0.0)):
        gate.took(_record(f"t{i}"), now)
    assert gate.hold(_record("p"), "q", (-5, 1, "p"), 0.5)
    assert gate.release(1.0) == [("q", (-5, 1, "p"))]
    gate.settle(1.0)  # nothing was placed (no free worker): "p" is back in its queue's heap
    assert gate.hold(_record("p"), "q", (-5, 1, "p"), 1.1) is False  # and goes when a worker is free


# -- the producer's side ---------------------------------------------------------------------
def _app() -> TaskApp:
    return TaskApp("mqtt://127.0.0.1:1", prefix="p", receipts=False)


def test_registration_checks_the_limit_and_the_key() -> None:
    app = _app()
    with pytest.raises(ConfigError, match="malformed"):
        app.task(name="t1", rate_limit="fast")(lambda: None)
    with pytest.raises(ConfigError, match="not one of its arguments"):
        app.task(name="t2", rate_limit="1/s", rate_key="device")(lambda serial: None)
    with pytest.raises(ConfigError, match="needs a rate_limit"):
        app.task(name="t3", rate_key="serial")(lambda serial: None)


def test_the_key_comes_from_an_argument_a_callable_or_the_submission() -> None:
    app = _app()

    @app.task(rate_limit="10/s", rate_key="device")
    def send(payload: str, device: str = "none") -> None: ...

    @app.task(rate_limit="10/m", rate_key=lambda order: order["customer"])
    def ship(order: dict[str, Any]) -> None: ...

    assert rate_fields("send", send.options, send.fn, ("x", "dev-1"), {}) == {"rate_limit": "10/s",
                                                                              "rate_key": "dev-1"}
    assert rate_fields("send", send.options, send.fn, ("x",), {"device": "dev-2"})["rate_key"] == "dev-2"
    assert rate_fields("ship", ship.options, ship.fn, ({"customer": "acme"},), {})["rate_key"] == "acme"
    with pytest.raises(ConfigError, match="was not given"):
        rate_fields("send", send.options, send.fn, ("x",), {})
    with pytest.raises(ConfigError, match="malformed"):
        send.submit_with(["x", "d"], rate_limit="10 per second")


# -- who holds a limited task -----------------------------------------------------------------
def test_a_worker_hands_a_limited_task_over_unless_the_coordinator_dispatched_it() -> None:
    task = validate.task({"id": "t", "task": "send", "rate_limit": "1/s"})
    assert judge(task, None, {"send"}) == RATE_LIMITED
    assert judge(task, None, {"send"}, due=True) is None  # from its inbox: within the limit
    assert judge(validate.task({"id": "u", "task": "send"}), None, {"send"}) is None


def test_the_coordinator_puts_a_limited_task_in_its_backlog_when_it_sees_it() -> None:
    record = leases.new_record("t", 0.0)
    effects = leases.on_task(record, {"id": "t", "task": "send", "rate_limit": "1/s", "rate_key": "d"}, 0.0,
                             leases.LeasePolicy())
    assert record.state == "backlog" and effects == [leases.Enqueue("t")]
    assert (record.rate_limit, record.rate_key) == ("1/s", "d")


def test_a_hand_over_brings_the_workers_registered_limit() -> None:
    record = leases.new_record("t", 0.0)
    leases.on_task(record, {"id": "t", "task": "send", "args": [1], "sig": "..."}, 0.0, leases.LeasePolicy())
    assert record.state == "queued" and record.rate_limit is None
    body = {"id": "t", "task": "send", "args": [1], "sig": "..."}
    assert leases.on_delayed_handover(record, 1, "w1", body, 0.1, ("2/s", "d")) == [leases.Enqueue("t")]
    assert (record.rate_limit, record.rate_key) == ("2/s", "d")
    assert record.body == body  # dispatched as it was sent: a signature over it still holds
