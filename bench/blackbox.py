"""Latency measured from outside, by C clients only: what a user with ``mosquitto_pub`` sees.

A C producer (``mosquitto_pub -l``) publishes task JSON lines written to its stdin at a fixed rate
onto ``P/tasks/default``; a C observer (``mosquitto_sub`` on ``P/status/+``, each line stamped by
the observer itself with ``%U``) sees the final event. Latency is from the moment a line is handed
to the producer's stdin to the observer's stamp of the task's first final event: it includes the
producer's and the observer's own hops, which the in-process figures of ``clients`` leave out.

Systems, measured back to back in each run so that the ratios share the machine's load:
2 ``mqtt-worker`` processes without a coordinator, the same with a coordinator (SQLite store),
and 2 bare paho workers (the ceiling: they publish ``succeeded`` on ``P/status/{id}``, nothing else).
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.cluster import Child, Procs, cpu_s
from bench.stats import percentile

FINAL = {"succeeded", "failed", "dead", "cancelled", "expired"}
SYSTEMS = ("mqtt-tasks, no coordinator", "mqtt-tasks + coordinator", "bare paho workers (ceiling)")


class Observer:
    """``mosquitto_sub`` on ``P/status/+``: the observer's stamp of each task's first final event."""

    def __init__(self, host: str, port: int, prefix: str) -> None:
        self.finals: dict[str, float] = {}
        self.states: collections.Counter[str] = collections.Counter()
        self._proc = subprocess.Popen(
            ["mosquitto_sub", "-h", host, "-p", str(port), "-q", "1", "--nodelay", "-t", f"{prefix}/status/+",
             "-F", "%U %t %p"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._thread = threading.Thread(target=self._read, name="blackbox-observer", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            stamp, topic, payload = (line.split(" ", 2) + ["", ""])[:3]
            task_id = topic.rsplit("/", 1)[-1]
            state = payload.partition('"state":')[2][:16].split('"')
            self.states[state[1] if len(state) > 1 else "?"] += 1
            if task_id in self.finals or not any(f'"state":"{s}"' in payload.replace(" ", "") for s in FINAL):
                continue
            self.finals[task_id] = float(stamp)

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(5)


def produce(host: str, port: int, prefix: str, tag: str, rate: float, seconds: float) -> dict[str, float]:
    """Task lines into ``mosquitto_pub -l`` at ``rate``/s; each id's wall time when handed over."""
    proc = subprocess.Popen(["mosquitto_pub", "-h", host, "-p", str(port), "-q", "1", "--nodelay", "-l",
                             "-t", f"{prefix}/tasks/default"], stdin=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, bufsize=1)
    assert proc.stdin is not None
    time.sleep(0.3)  # mosquitto_pub connects before its first line is read; not a measured step
    sent: dict[str, float] = {}
    n = int(rate * seconds)
    t0 = time.monotonic()
    for i in range(n):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        task_id = f"{tag}-{i}"
        sent[task_id] = time.time()
        proc.stdin.write(f'{{"id":"{task_id}","task":"noop"}}\n')
    proc.stdin.close()
    proc.wait(30)
    return sent


def wait_finals(observer: Observer, sent: dict[str, float], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(i in observer.finals for i in sent):
        time.sleep(0.05)


@dataclass
class Outcome:
    """One system's run: latencies (ms), tasks with no final event, CPU seconds of its parts."""

    p50: float
    p99: float
    missing: int
    cpu: dict[str, float] = field(default_factory=dict)


def one_run(bench: Any, system: str, rate: float, seconds: float) -> Outcome:
    """One system on a fresh prefix: warm-up, then ``rate``/s for ``seconds``."""
    from bench import coord
    from bench.run import unique

    url = bench.mosquitto.url
    host, port = url.split("//")[1].split(":")
    prefix = unique("bb")
    started: list[Child] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-blackbox-"))
    try:
        if system == SYSTEMS[1]:
            started.append(coord.start(url, prefix, tmp / "tasks.db"))
        role = "paho-worker" if system == SYSTEMS[2] else "mqtt-worker"
        started += bench.start_workers(role, url, prefix)
        observer = Observer(host, int(port), prefix)
        try:
            wait_finals(observer, produce(host, int(port), prefix, "warm", rate, 0.5), 10)
            pids = {c.name: c.pid for c in started} | {"mosquitto": bench.mosquitto.pid}
            cpu0 = {name: cpu_s(pid) for name, pid in pids.items()}
            sent = produce(host, int(port), prefix, "t", rate, seconds)
            wait_finals(observer, sent, 30)
            cpu = {name: cpu_s(pid) - cpu0[name] for name, pid in pids.items()}
        finally:
            observer.close()
        lat = [(observer.finals[i] - t) * 1000 for i, t in sent.items() if i in observer.finals]
        return Outcome(percentile(lat, 50), percentile(lat, 99), len(sent) - len(lat), cpu)
    finally:
        Procs.stop(*reversed(started))
        shutil.rmtree(tmp, ignore_errors=True)


def run(bench: Any) -> None:
    """Every system once per run, back to back; the with/without ratio of p99 per run."""
    if shutil.which("mosquitto_pub") is None or shutil.which("mosquitto_sub") is None:
        for system in SYSTEMS:
            bench.na("black-box latency", system, "p99", "ms", "n/a (mosquitto-clients not installed)")
        return
    cfg = bench.cfg
    seconds = max(cfg.lat_seconds, 2.0)
    figures: dict[str, tuple[list[float], list[float]]] = {s: ([], []) for s in SYSTEMS}
    lost: dict[str, int] = dict.fromkeys(SYSTEMS, 0)
    for _ in range(cfg.runs):
        for system in SYSTEMS:
            outcome = one_run(bench, system, cfg.rate, seconds)
            figures[system][0].append(outcome.p50)
            figures[system][1].append(outcome.p99)
            lost[system] += outcome.missing
    note = f"{cfg.rate:,.0f}/s for {seconds:g} s x {cfg.runs}; mosquitto_pub -l -> mosquitto_sub on P/status/+"
    for system in SYSTEMS:
        extra = f"; {lost[system]} without a final event within 30 s" if lost[system] else ""
        bench.add("black-box latency", system, "p50", "ms", figures[system][0], note + extra)
        bench.add("black-box latency", system, "p99", "ms", figures[system][1], note + extra)
    ratios = [w / wo for w, wo in zip(figures[SYSTEMS[1]][1], figures[SYSTEMS[0]][1], strict=True) if wo]
    bench.add("black-box latency", "coordinator p99 / without", "ratio", "x", ratios,
              "per run, the two measured back to back (goal: <= 2)")
