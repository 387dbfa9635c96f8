"""``python -m bench --profile``: where the time goes on the mqtt-tasks hot path.

Runs the end-to-end no-op workload (2 workers, coordinator on) and records, with py-spy
(sampling, ``--nonblocking``, idle samples left out), one worker process, the producer (this
process) and the coordinator. Writes the raw stacks to ``bench/results/profile-*.txt`` and
prints, per process, the functions with the most samples on CPU, self and inclusive.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import clients, coord
from bench.cluster import Procs

RESULTS = Path(__file__).resolve().parent / "results"
SECONDS = 10


def record(pid: int, name: str, seconds: int) -> subprocess.Popen[bytes]:
    out = RESULTS / f"profile-{name}.txt"
    return subprocess.Popen(["py-spy", "record", "-p", str(pid), "-d", str(seconds), "-r", "200", "-f", "raw",
                             "--nonblocking", "--threads", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize(name: str, top: int = 18) -> str:
    path = RESULTS / f"profile-{name}.txt"
    if not path.exists():
        return f"{name}: no profile (py-spy failed)"
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        threads[frames[0]] += n
        funcs = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].split("/")[-1] + ")"
                 for f in frames[1:]] or [frames[0]]
        self_t[funcs[-1]] += n
        for f in set(funcs):
            incl[f] += n
    lines = [f"--- {name}: {total} samples on CPU at 200 Hz over {SECONDS} s"]
    lines.append("  by thread: " + ", ".join(f"{t.split('(')[0].strip()} {c * 100 / total:.0f}%"
                                             for t, c in threads.most_common(6)))
    lines.append("  self time:")
    lines += [f"    {c * 100 / total:5.1f}%  {f}" for f, c in self_t.most_common(top)]
    lines.append("  inclusive:")
    lines += [f"    {c * 100 / total:5.1f}%  {f}" for f, c in incl.most_common(top + 10)]
    return "\n".join(lines)


def run(bench: Any) -> None:
    import os

    from bench.run import unique

    RESULTS.mkdir(parents=True, exist_ok=True)
    url = bench.mosquitto.url
    prefix = unique("prof")
    tmp = Path(tempfile.mkdtemp(prefix="bench-prof-"))
    use_coord = coord.unavailable() is None
    coordinator = coord.start(url, prefix, tmp / "tasks.db") if use_coord else None
    workers = bench.start_workers("mqtt-worker", url, prefix)
    client = clients.MqttTasksClient(url, prefix)
    try:
        client.throughput(1000)
        targets = {"worker": workers[0].pid, "producer": os.getpid()}
        if coordinator is not None:
            targets["coordinator"] = coordinator.pid
        spies = [record(pid, name, SECONDS) for name, pid in targets.items()]
        stop = threading.Event()
        done = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < SECONDS + 1 and not stop.is_set():
            done += client.throughput(5000).done
        rate = done / (time.monotonic() - t0)
        for spy in spies:
            spy.wait(60)
        print(f"profiled {done:,} tasks at {rate:,.0f} tasks/s (under py-spy)\n")
        report = "\n\n".join(summarize(name) for name in targets)
        print(report)
        (RESULTS / "profile-summary.txt").write_text(report + "\n")
    finally:
        client.close()
        Procs.stop(*workers, *([coordinator] if coordinator else []))
        shutil.rmtree(tmp, ignore_errors=True)
