"""The worker on a small device: idle RSS of ``mqtt-worker``, RSS after N tasks, and the time
from exec to "subscribed and ready" (its first retained ``online`` heartbeat, which the worker
sends once connected; a plain paho watcher stamps its arrival).

Measured on the real CLI, ``mqtt-worker bench.noop_app:app``; the bare paho worker of the
ceiling is the baseline.
"""

from __future__ import annotations

import time
from typing import Any

from bench import clients
from bench.cluster import Procs, rss_mb
from bench.mqttwatch import Watch, online

SYSTEM = "mqtt-worker (1 process)"
SETTLE_S = 2.5  # idle: one heartbeat after ready


def run(bench: Any) -> None:
    from bench.run import unique

    cfg = bench.cfg
    url = bench.mosquitto.url
    ready, idle = [], []
    child = None
    prefix = ""
    for i in range(cfg.runs):
        prefix = unique("fp")
        watch = Watch(url, f"{prefix}/workers/+")
        try:
            child = Procs.start("mqtt-worker", ["mqtt-worker", "bench.noop_app:app", "--broker", url,
                                                "--prefix", prefix, "--concurrency", "8", "--log-level", "warning"],
                                env={"MQTT_TASKS_BROKER": url})
            seen = watch.wait(online, 30, since=child.started_at)
            if seen is None:
                raise RuntimeError(f"mqtt-worker sent no online heartbeat within 30 s:\n{child.output()[-2000:]}")
            ready.append(seen - child.started_at)
        finally:
            watch.close()
        time.sleep(SETTLE_S)
        idle.append(rss_mb(child.pid, children=True))
        if i < cfg.runs - 1:
            Procs.stop(child)
    bench.add("footprint", SYSTEM, "exec -> ready", "s", ready, "exec to first retained online heartbeat")
    bench.add("footprint", SYSTEM, "idle RSS", "MB", idle, f"{SETTLE_S:g} s after ready")
    assert child is not None
    client = clients.MqttTasksClient(url, prefix)
    try:
        run_ = client.throughput(cfg.footprint_tasks)
        time.sleep(0.5)
        bench.add("footprint", SYSTEM, f"RSS after {cfg.footprint_tasks // 1000}k", "MB",
                  [rss_mb(child.pid, children=True)],
                  f"{run_.done:,} of {cfg.footprint_tasks:,} no-op tasks run by this one worker")
    finally:
        client.close()
        Procs.stop(child)
    baseline(bench, url)


def baseline(bench: Any, url: str) -> None:
    from bench.run import unique

    ready, idle = [], []
    for _ in range(bench.cfg.runs):
        child = Procs.role("paho-worker", "--broker", url, "--prefix", unique("fb"), name="paho-worker")
        ready.append(child.wait_ready(30))
        time.sleep(SETTLE_S)
        idle.append(rss_mb(child.pid))
        Procs.stop(child)
    bench.add("footprint", "bare paho worker (baseline)", "exec -> ready", "s", ready, "exec to SUBACK")
    bench.add("footprint", "bare paho worker (baseline)", "idle RSS", "MB", idle)
    interpreter(bench)


def interpreter(bench: Any) -> None:
    """The floor under both: an interpreter that imports nothing, with this machine's site hooks
    (``.pth`` files run at every start; some sandboxes add one that imports certifi) and without."""
    import subprocess
    import sys

    code = "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmRSS')))"
    for label, flags in (("python (site, .pth hooks)", []), ("python -S (no site)", ["-S"])):
        runs = [int(subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True,
                                   check=True).stdout) / 1024 for _ in range(bench.cfg.runs)]
        bench.add("footprint", f"bare interpreter: {label}", "idle RSS", "MB", runs,
                  "floor under every Python process on this machine")
