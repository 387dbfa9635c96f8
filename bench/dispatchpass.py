"""The coordinator's dispatch pass at fleet scale, in-process (pure logic, no broker):
``python -m bench.dispatchpass [--workers N] [--backlog N] [--free N]``.

A fleet of ``--workers`` live workers of one queue, ``--free`` of them with a free slot, and a
backlog of ``--backlog`` tasks: the time of one ``Backlog.dispatch`` (placing ``--free`` tasks),
and of one pass with no free slot anywhere (what every batch costs while the backlog waits).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from mqtt_tasks.coordinator.backlog import Backlog
from mqtt_tasks.coordinator.fleet import Fleet
from mqtt_tasks.leases import LeasePolicy
from mqtt_tasks.protocol.states import BACKLOG
from mqtt_tasks.store.base import TaskRecord


class _Records:
    def __init__(self) -> None:
        self.live: dict[str, TaskRecord] = {}

    def dispatched(self, record: TaskRecord) -> None: ...


class _Effects:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def dispatch(self, record: TaskRecord, worker: str, *, alone: bool = False) -> None:
        self.sent.append((record.id, worker))


def setup(workers: int, backlog: int, free: int, now: float) -> tuple[Backlog, _Records, _Effects]:
    policy = LeasePolicy()
    fleet = Fleet(policy)
    for i in range(workers):
        view = fleet.view(f"w{i}")
        view.queues, view.concurrency, view.heartbeat_s, view.last_seen = ("q",), 1, 30.0, now
        view.duration = 0.05 + (i % 7) * 0.01
    for i in range(free):
        fleet.set_free(fleet.views[f"w{i * (workers // max(free, 1))}"], 1)
    stats = {"dispatched": 0}
    queue = Backlog(policy, fleet, stats)
    records = _Records()
    for i in range(backlog):
        records.live[f"t{i}"] = TaskRecord(f"t{i}", state=BACKLOG, queue="q")
        queue.push(f"t{i}", "q")
    return queue, records, _Effects()


def timed(workers: int, backlog: int, free: int) -> dict[str, Any]:
    now = time.time()
    queue, records, effects = setup(workers, backlog, free, now)
    t0 = time.perf_counter()
    queue.dispatch(now, records, effects)  # type: ignore[arg-type]
    placing = time.perf_counter() - t0
    t0 = time.perf_counter()
    queue.dispatch(now, records, effects)  # type: ignore[arg-type]
    idle = time.perf_counter() - t0
    return {"placed": len(effects.sent), "placing_ms": placing * 1000, "full_pass_ms": idle * 1000}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dispatchpass")
    parser.add_argument("--workers", type=int, default=10_000)
    parser.add_argument("--backlog", type=int, default=2_000)
    parser.add_argument("--free", type=int, default=1_000)
    args = parser.parse_args(argv)
    print(timed(args.workers, args.backlog, args.free))


if __name__ == "__main__":
    main()
