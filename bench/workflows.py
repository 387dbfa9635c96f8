"""Workflows: a 100-step chain and a 1,000-member group, and what the coordinator adds per step.

    python -m bench.workflows [--runs 3] [--chain 100] [--group 1000]

A private Mosquitto (the repository's mosquitto.conf), a coordinator process (``mqtt-tasks
coordinator``, SQLite store) and two ``mqtt-worker`` processes (concurrency 8, one no-op task),
as ``python -m bench`` runs them. Each figure is set against the same work done without a
workflow, on the same processes:

- chain: N no-op steps (immutable signatures) one after another, against N no-op tasks each
  submitted when the previous one's result came back. The difference per step is what a chain
  costs over a client that chains by hand: the step's final event reaching the coordinator, its
  commit, and the next step's publish, instead of the result's trip to the producer and back.
- group: N no-op members, against N no-op tasks submitted at once and all awaited.

Prints one markdown table (docs/benchmarks.md, "Workflows").
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from bench import coord
from bench.cluster import Procs, install_cleanup
from mqtt_tasks import Signature, TaskApp, chain, group


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def hand_chain(app: TaskApp, n: int) -> None:
    for _ in range(n):
        app.submit("noop").result(60)


def burst(app: TaskApp, n: int) -> None:
    handles = [app.submit("noop") for _ in range(n)]
    for handle in handles:
        handle.result(120)


def run(url: str, prefix: str, runs: int, chain_n: int, group_n: int) -> list[tuple[str, float, float]]:
    app = TaskApp(url, prefix=prefix)
    noop = Signature("noop", immutable=True, app=app)
    burst(app, 200)  # warm-up: connections, first-use caches, the coordinator's view of the workers
    chain(*[noop] * 5).submit().result(60)
    rows = []
    chain_s = [timed(lambda: chain(*[noop] * chain_n).submit().result(300)) for _ in range(runs)]
    by_hand = [timed(lambda: hand_chain(app, chain_n)) for _ in range(runs)]
    rows.append((f"chain of {chain_n}", statistics.median(chain_s), statistics.median(by_hand)))
    group_s = [timed(lambda: group(*[noop] * group_n).submit().result(300)) for _ in range(runs)]
    tasks_s = [timed(lambda: burst(app, group_n)) for _ in range(runs)]
    rows.append((f"group of {group_n:,}", statistics.median(group_s), statistics.median(tasks_s)))
    app.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--chain", type=int, default=100)
    parser.add_argument("--group", type=int, default=1000)
    args = parser.parse_args(argv)
    from tests.brokers import MosquittoProcess

    install_cleanup()
    prefix = f"wf{uuid.uuid4().hex[:8]}"
    with MosquittoProcess() as mosquitto, tempfile.TemporaryDirectory() as tmp:
        try:
            coord.start(mosquitto.url, prefix, Path(tmp) / "coordinator.db")
            workers = [Procs.role("mqtt-worker", "--broker", mosquitto.url, "--prefix", prefix, "--concurrency",
                                  "8", name=f"mqtt-worker{i}") for i in range(2)]
            for worker in workers:
                worker.wait_ready(60)
            rows = run(mosquitto.url, prefix, args.runs, args.chain, args.group)
        finally:
            Procs.close()
    print(f"\nmedian of {args.runs} runs\n\n| workload | as a workflow | same tasks without one | "
          "coordinator overhead per step |\n|---|---|---|---|")
    for name, flow_s, plain_s in rows:
        steps = int(name.split()[-1].replace(",", ""))
        print(f"| {name} | {flow_s:.2f} s ({flow_s / steps * 1000:.1f} ms/step) | {plain_s:.2f} s "
              f"({plain_s / steps * 1000:.1f} ms/task) | {(flow_s - plain_s) / steps * 1000:+.1f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
