"""The dispatch choice at fleet scale, as pure logic: ``fleet.Picker`` picks what
``leases.pick_worker`` picks, and a dispatch pass over a fleet of 10,000 costs O(free workers).
"""

from __future__ import annotations

import random
import time

from bench.dispatchpass import setup, timed
from mqtt_tasks import leases
from mqtt_tasks.coordinator.fleet import Fleet, Picker
from mqtt_tasks.leases import LeasePolicy, WorkerView

POLICY = LeasePolicy()
NOW = 1000.0


def fleet_of(rng: random.Random, n: int) -> list[WorkerView]:
    views = []
    for i in range(n):
        w = WorkerView(f"w{i}", queues=("q",) if rng.random() < 0.9 else ("other",), concurrency=rng.randint(1, 4),
                       heartbeat_s=2.0, last_seen=NOW if rng.random() < 0.9 else NOW - 60)
        w.free = rng.randint(0, w.concurrency)
        w.duration = rng.choice([0.0, 0.05, 0.1, 0.5, 2.0])
        views.append(w)
    return views


def test_the_picker_picks_what_pick_worker_picks_placement_after_placement() -> None:
    rng = random.Random(7)
    for trial in range(200):
        views = fleet_of(rng, rng.randint(1, 30))
        fleet = Fleet(POLICY)
        for w in views:
            twin = fleet.view(w.worker)
            vars(twin).update(vars(w))
            fleet.set_free(twin, w.free)
        picker = fleet.serving({"q"}, NOW).get("q")
        backlog = rng.randint(1, 50)
        for waiting in range(backlog, 0, -1):
            expected = leases.pick_worker(views, "q", NOW, POLICY, backlog=waiting)
            got = picker.pick(waiting) if picker is not None else None
            assert (got.worker if got else None) == (expected.worker if expected else None), f"trial {trial}"
            if expected is None:
                break
            expected.free -= 1
            assert got is not None
            got.free -= 1
            picker.taken(got)


def test_a_full_fleet_of_10000_offers_nothing_and_reads_no_worker() -> None:
    fleet = Fleet(POLICY)
    for i in range(10_000):
        view = fleet.view(f"w{i}")
        view.queues, view.concurrency, view.heartbeat_s, view.last_seen = ("q",), 1, 30.0, NOW
    assert fleet.serving({"q"}, NOW) == {}
    fleet.set_free(fleet.views["w9999"], 1)
    offered = fleet.serving({"q"}, NOW)
    assert isinstance(offered["q"], Picker) and offered["q"].pick(1) is fleet.views["w9999"]


def test_a_dispatch_pass_over_10000_workers_places_in_milliseconds_not_seconds() -> None:
    queue, records, effects = setup(10_000, 2_000, 1_000, time.time())
    assert len(queue) == 2_000
    figures = timed(10_000, 2_000, 1_000)
    assert figures["placed"] > 0
    assert figures["placing_ms"] < 1_000, figures  # was 4,600 ms with a scan of the fleet per placement
    assert figures["full_pass_ms"] < 100, figures  # was 17 ms for every batch while the backlog waited


def test_died_since_says_what_a_search_of_the_fleet_says() -> None:
    """Random joins, losses and queue changes: the kept latest loss per queue against the search."""
    from mqtt_tasks.protocol.messages import WorkerState
    from mqtt_tasks.store.base import TaskRecord

    rng = random.Random(11)
    fleet = Fleet(POLICY)
    now = NOW
    for _ in range(3000):
        now += rng.random()
        worker = f"w{rng.randint(0, 20)}"
        if rng.random() < 0.3:
            fleet.lost(worker, now)
        else:
            queues = rng.sample(["a", "b", "c"], rng.randint(0, 2))
            fleet.heard(worker, WorkerState(worker=worker, state="online", queues=queues, ts=now), now, False)
        record = TaskRecord("t", queue=rng.choice(["a", "b", "c"]), created=now - rng.random() * 30)
        searched = any(w.lost_at is not None and w.lost_at >= record.created and record.queue in w.queues
                       for w in fleet.views.values())
        assert fleet.died_since(record) is searched
