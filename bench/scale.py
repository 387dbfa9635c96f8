"""One coordinator and a large fleet: 200 and 10,000 simulated workers (``bench.fleetsim``) that
heartbeat every 30 s like devices and answer tasks, against one coordinator on the private
Mosquitto (the repository's mosquitto.conf; ``max_connections`` is unlimited there, the open-file
limit is raised to the hard limit by ``python -m bench`` before Mosquitto starts).

Figures per fleet size, measured in the same run: the coordinator's CPU % while the fleet only
heartbeats (over one heartbeat interval, so every worker is heard once or more), its RSS, then the
throughput of no-op tasks answered by the simulated workers and the coordinator's CPU seconds per
10,000 of them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import clients, coord
from bench.cluster import PY, Child, Procs, cpu_s, rss_mb

PER_PROCESS = 2500
HEARTBEAT_S = 30.0


def start_fleet(url: str, prefix: str, count: int) -> list[Child]:
    """The simulator processes, one after the other (Mosquitto's listen backlog is 100: several
    processes connecting thousands at once see resets)."""
    sims: list[Child] = []
    for i in range(0, count, PER_PROCESS):
        n = min(PER_PROCESS, count - i)
        sims.append(Procs.start(f"fleetsim{i // PER_PROCESS}", [
            PY, "-m", "bench.fleetsim", "--broker", url, "--prefix", prefix, "--count", str(n),
            "--heartbeat", str(HEARTBEAT_S), "--tag", f"{prefix}-s{i // PER_PROCESS}", "--parent-pid",
            str(os.getpid())]))
        sims[-1].wait_ready(180)
    return sims


def one_fleet(bench: Any, count: int) -> None:
    from bench.run import unique

    cfg = bench.cfg
    url = bench.mosquitto.url
    prefix = unique("fleet")
    tmp = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    system = f"coordinator + {count:,} sim. workers"
    coordinator = coord.start(url, prefix, tmp / "tasks.db")
    sims: list[Child] = []
    client = None
    try:
        t_join = time.monotonic()
        sims = start_fleet(url, prefix, count)
        join_s = time.monotonic() - t_join
        time.sleep(3.0)  # the join burst (every worker's first heartbeat) is behind us
        window = HEARTBEAT_S if not cfg.quick else 10.0
        cpu0, t0 = cpu_s(coordinator.pid), time.monotonic()
        time.sleep(window)
        pct = (cpu_s(coordinator.pid) - cpu0) / (time.monotonic() - t0) * 100
        note = f"heartbeat every {HEARTBEAT_S:g} s, CPU over {window:g} s with no tasks; joined in {join_s:.0f} s"
        bench.add("scale", system, "CPU idle", "%", [pct], note)
        bench.add("scale", system, "RSS", "MB", [rss_mb(coordinator.pid)], f"{count:,} workers known")
        client = clients.MqttTasksClient(url, prefix)
        n = max(1000, cfg.tasks // 4)
        client.throughput(min(500, n))
        cpu0 = cpu_s(coordinator.pid)
        runs = [client.throughput(n) for _ in range(cfg.runs)]
        per_10k = (cpu_s(coordinator.pid) - cpu0) / (n * cfg.runs) * 10_000
        bench.add("scale", system, "throughput", "tasks/s", [r.rate if r.complete else float("nan") for r in runs],
                  f"{n:,} no-op tasks answered by the simulated workers")
        bench.add("scale", system, "CPU/10k tasks", "CPU s", [per_10k], "over the throughput runs")
    finally:
        if client is not None:
            client.close()
        Procs.stop(*sims, coordinator)
        shutil.rmtree(tmp, ignore_errors=True)


def run(bench: Any) -> None:
    for count in (200, 10_000):
        one_fleet(bench, count)
