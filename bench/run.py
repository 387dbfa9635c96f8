"""``python -m bench [--quick] [--only SECTION ...] [--profile]``: every workload in one run.

Prints the table, writes ``bench/results/latest.json`` and ``docs/bench-throughput.png``.
All traffic is on 127.0.0.1: a private Mosquitto from the repository's mosquitto.conf on a free
port, the embedded amqtt broker in a child process, Redis on 127.0.0.1:6379 in DBs 9 and 10
only (flushed before and after; DB 0 is never touched), PostgreSQL on 127.0.0.1:5432 in a database
of the ``coordinator-pg`` section's own (created, then dropped).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import clients, coord_pg  # noqa: E402
from bench.cluster import Child, Procs, cpu_s, install_cleanup  # noqa: E402
from bench.stats import percentile, summary, table  # noqa: E402

RESULTS = ROOT / "bench" / "results"
CHART = ROOT / "docs" / "bench-throughput.png"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
CELERY_DB, DRAMATIQ_DB = 9, 10
N_WORKERS = 2


@dataclass
class Config:
    quick: bool
    runs: int = 3
    tasks: int = 20_000  # end-to-end, per run
    peer_tasks: int = 20_000
    celery_tasks: int = 20_000
    rate: float = 1000.0  # latency workload
    lat_seconds: float = 5.0
    footprint_tasks: int = 10_000
    flat_batches: int = 5
    flat_batch: int = 20_000
    sim_workers: int = 200
    sim_seconds: float = 10.0
    dramatiq_configs: tuple[tuple[int, int], ...] = ((2, 8), (2, 16), (2, 4))
    celery_configs: tuple[str, ...] = ("prefork:2", "threads:2x8")

    @classmethod
    def make(cls, quick: bool) -> Config:
        if not quick:
            return cls(quick=False)
        return cls(quick=True, tasks=2_000, peer_tasks=2_000, celery_tasks=800, lat_seconds=1.5,
                   footprint_tasks=2_000, flat_batches=3, flat_batch=2_000, sim_seconds=4.0,
                   dramatiq_configs=((2, 8),), celery_configs=("prefork:2",))


class Bench:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.rows: list[dict[str, Any]] = []
        self.extra: dict[str, Any] = {}
        self.mosquitto: Any = None

    # -- rows -------------------------------------------------------------------------------
    def add(self, workload: str, system: str, metric: str, unit: str, runs: list[float], note: str = "") -> None:
        row = {"workload": workload, "system": system, "metric": metric, "unit": unit, "note": note,
               **summary(runs)}
        self.rows.append(row)
        m = row["median"]
        shown = "n/a" if m is None else (f"{m:,.0f}" if unit == "tasks/s" else f"{m:.3g}")
        print(f"  {system:<38} {metric:<14} {shown:>10} {unit:<8} {note}", flush=True)

    def na(self, workload: str, system: str, metric: str, unit: str, why: str) -> None:
        self.rows.append({"workload": workload, "system": system, "metric": metric, "unit": unit,
                          "runs": [], "median": None, "min": None, "max": None, "note": why})
        print(f"  {system:<38} {metric:<14} {'n/a':>10} {unit:<8} {why}", flush=True)

    def section(self, name: str, fn: Callable[[], None]) -> None:
        print(f"\n== {name}", flush=True)
        t0 = time.monotonic()
        try:
            fn()
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - one failing section must not lose the others
            traceback.print_exc()
            self.na(name, "-", "error", "", f"section failed: {type(exc).__name__}: {str(exc)[:200]}")
        print(f"   ({time.monotonic() - t0:.0f} s)", flush=True)

    # -- common workload on a running set of workers ----------------------------------------
    def measure(self, system: str, client: Any, n: int, *, latency: bool = True,
                probe: Callable[[], None] | None = None) -> float | None:
        """Throughput (median of runs; returned) and, unless ``latency=False``, latency at the fixed rate."""
        cfg = self.cfg
        client.throughput(min(500, n))  # warm-up: connections, imports, first-use caches
        rates, notes = [], []
        for _ in range(cfg.runs):
            run = client.throughput(n)
            rates.append(run.rate if run.complete else float("nan"))
            if not run.complete:
                notes.append(f"{run.n - run.done} of {run.n} results missing")
            if probe:
                probe()
        self.add("throughput", system, "throughput", "tasks/s", rates,
                 f"{n:,} no-op tasks x {cfg.runs} runs" + ("; " + "; ".join(notes) if notes else ""))
        if latency:
            self.measure_latency(system, client)
        return self.rows[-1 if not latency else -3]["median"]

    def measure_latency(self, system: str, client: Any) -> None:
        cfg = self.cfg
        p50, p99, lags, lost = [], [], [], 0
        for _ in range(cfg.runs):
            run = client.latency(cfg.rate, cfg.lat_seconds)
            p50.append(percentile(run.latencies_ms, 50))
            p99.append(percentile(run.latencies_ms, 99))
            lags.append(run.submit_lag_ms)
            lost += run.n - run.done
        note = f"{cfg.rate:,.0f}/s for {cfg.lat_seconds:g} s x {cfg.runs}"
        if lost:
            note += f"; {lost} results not back within 30 s (excluded)"
        if max(lags) > 50:
            note += f"; submitter fell up to {max(lags):.0f} ms behind schedule"
        self.add("latency", system, "p50", "ms", p50, note)
        self.add("latency", system, "p99", "ms", p99, note)

    def start_workers(self, role: str, url: str, prefix: str, count: int = N_WORKERS, *extra: str) -> list[Child]:
        workers = [Procs.role(role, "--broker", url, "--prefix", prefix, *extra, name=f"{role}{i}")
                   for i in range(count)]
        for w in workers:
            w.wait_ready(60)
        return workers

    # -- sections ---------------------------------------------------------------------------
    def bare_paho(self) -> None:
        prefix = unique("paho")
        workers = self.start_workers("paho-worker", self.mosquitto.url, prefix)
        client = clients.PahoClient(self.mosquitto.url, prefix)
        try:
            self.measure("bare paho (ceiling), Mosquitto", client, self.cfg.tasks)
        finally:
            client.close()
            Procs.stop(*workers)

    def mqtt_tasks_mosquitto(self) -> None:
        prefix = unique("mt")
        workers = self.start_workers("mqtt-worker", self.mosquitto.url, prefix)
        client = clients.MqttTasksClient(self.mosquitto.url, prefix)
        try:
            self.measure("mqtt-tasks, Mosquitto", client, self.cfg.tasks)
        finally:
            client.close()
            Procs.stop(*workers)

    def mqtt_tasks_amqtt(self) -> None:
        broker = Procs.role("amqtt-broker", name="amqtt-broker")
        broker.wait_ready(30)
        url = broker.info["url"]
        prefix = unique("ma")
        workers = self.start_workers("mqtt-worker", url, prefix)
        client = clients.MqttTasksClient(url, prefix)
        try:
            cpu0 = cpu_s(broker.pid)
            self.measure("mqtt-tasks, embedded amqtt", client, self.cfg.tasks)
            self.extra["amqtt_broker_cpu_s"] = cpu_s(broker.pid) - cpu0
        finally:
            client.close()
            Procs.stop(*workers, broker)

    def coordinator(self) -> None:
        from bench import coord

        why = coord.unavailable()
        names = ["mqtt-tasks + coordinator, Mosquitto"]
        if why:
            for system in names:
                self.na("throughput", system, "throughput", "tasks/s", why)
                self.na("latency", system, "p50", "ms", why)
                self.na("latency", system, "p99", "ms", why)
            self.na("coordinator", "coordinator", "CPU/10k tasks", "CPU s", why)
            self.na("coordinator", "coordinator", "RSS growth/10k", "MB/10k", why)
            self.na("scale", f"coordinator + {self.cfg.sim_workers} sim. workers", "CPU", "%", why)
            return
        coord.run_all(self)

    def blackbox(self) -> None:
        from bench import blackbox

        blackbox.run(self)

    def fleet(self) -> None:
        from bench import scale

        scale.run(self)

    def peers_dramatiq(self) -> None:
        from bench import peers

        peers.dramatiq(self)

    def peers_celery(self) -> None:
        from bench import peers

        peers.celery(self)

    def footprint(self) -> None:
        from bench import footprint

        footprint.run(self)

    # -- output -----------------------------------------------------------------------------
    def ratios(self) -> None:
        thr = {r["system"]: r["median"] for r in self.rows if r["metric"] == "throughput"}
        ceiling = thr.get("bare paho (ceiling), Mosquitto")
        dramatiq = max((v for k, v in thr.items() if k.startswith("Dramatiq") and v), default=None)
        for r in self.rows:
            if r["metric"] != "throughput" or not r["median"]:
                continue
            parts = []
            if ceiling:
                parts.append(f"{r['median'] / ceiling:.2f}x ceiling")
            if dramatiq:
                parts.append(f"{r['median'] / dramatiq:.2f}x Dramatiq")
            r["ratio"] = ", ".join(parts)

    def targets(self) -> list[dict[str, Any]]:
        def get(system: str, metric: str) -> float | None:
            return next((r["median"] for r in self.rows if r["system"] == system and r["metric"] == metric), None)

        thr = {r["system"]: r["median"] for r in self.rows if r["metric"] == "throughput"}
        ceiling = thr.get("bare paho (ceiling), Mosquitto")
        dramatiq = max((v for k, v in thr.items() if k.startswith("Dramatiq") and v), default=None)
        coord_sys = "mqtt-tasks + coordinator, Mosquitto"
        plain_sys = "mqtt-tasks, Mosquitto"
        coord_thr = thr.get(coord_sys)
        lat_sys = coord_sys if get(coord_sys, "p50") else plain_sys
        out = []

        def target(name: str, value: float | None, goal: str, ok: bool | None, note: str = "") -> None:
            out.append({"target": name, "value": value, "goal": goal,
                        "status": "n/a" if ok is None else ("met" if ok else "MISSED"), "note": note})

        for label, system in (("with coordinator", coord_sys), ("without coordinator (reference)", plain_sys)):
            v = thr.get(system)
            r1 = v / ceiling if v and ceiling else None
            target(f"throughput {label} / bare-paho ceiling", r1, ">= 0.60",
                   None if r1 is None else r1 >= 0.6, "" if v else "not measured")
            r2 = v / dramatiq if v and dramatiq else None
            target(f"throughput {label} / Dramatiq best", r2, ">= 1.50",
                   None if r2 is None else r2 >= 1.5, "" if v else "not measured")
        p50, p99 = get(lat_sys, "p50"), get(lat_sys, "p99")
        target(f"p50 at 1,000/s ({lat_sys})", p50, "< 3 ms", None if p50 is None else p50 < 3)
        target(f"p99 at 1,000/s ({lat_sys})", p99, "< 20 ms", None if p99 is None else p99 < 20)
        rss = get("mqtt-worker (1 process)", "idle RSS")
        target("idle mqtt-worker RSS", rss, "< 30 MB", None if rss is None else rss < 30)
        ready = get("mqtt-worker (1 process)", "exec -> ready")
        target("mqtt-worker exec -> subscribed and ready", ready, "< 1 s", None if ready is None else ready < 1)
        over = next((r["median"] for r in self.rows if r["metric"] == "RSS over empty"), None)
        million = next((r["system"] for r in self.rows if r["metric"] == "RSS over empty"), "")
        # The batch-slope figure ("RSS growth/10k") also moves with the peak of tasks in flight;
        # the same batches on an empty store and on one of 1 million recorded tasks isolate the store.
        target(f"coordinator memory flat vs finished tasks ({million or 'recorded store'} vs empty)", over,
               "< 5 MB more", None if over is None else over < 5.0, "" if coord_thr else "coordinator not available")
        return out

    def report(self) -> dict[str, Any]:
        self.ratios()
        targets = self.targets()
        print("\n" + table(self.rows))
        print("\nTargets (issue 6):")
        for t in targets:
            v = t["value"]
            shown = "n/a" if v is None else f"{v:.3g}"
            print(f"  [{t['status']:>6}] {t['target']}: {shown} (goal {t['goal']}) {t['note']}")
        data = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": asdict(self.cfg), "machine": machine(),
                "rows": self.rows, "targets": targets, "extra": self.extra}
        RESULTS.mkdir(parents=True, exist_ok=True)
        name = "latest-quick.json" if self.cfg.quick else "latest.json"
        (RESULTS / name).write_text(json.dumps(data, indent=2, default=str))
        print(f"\nwrote {RESULTS / name}")
        return data


def unique(tag: str) -> str:
    return f"bench-{tag}-{uuid.uuid4().hex[:6]}"


def machine() -> dict[str, Any]:
    import paho.mqtt
    import pydantic

    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpus": os.cpu_count(), "paho-mqtt": paho.mqtt.__version__,
                            "pydantic": pydantic.VERSION}
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
        info["cpu"] = model
        info["memory_gb"] = round(int(Path("/proc/meminfo").read_text().split()[1]) / 1e6, 1)
    except (OSError, StopIteration, ValueError):
        pass
    for dist in ("amqtt", "celery", "dramatiq", "redis", "mqtt-tasks"):
        try:
            from importlib.metadata import version
            info[dist] = version(dist)
        except Exception:  # noqa: BLE001
            info[dist] = None
    try:
        out = subprocess.run([find_mosquitto_exe(), "-h"], capture_output=True, text=True, timeout=5).stdout
        info["mosquitto"] = out.splitlines()[0].split("version")[-1].strip()
    except Exception:  # noqa: BLE001
        info["mosquitto"] = None
    try:
        import redis
        info["redis-server"] = redis.Redis(REDIS_HOST, REDIS_PORT, db=CELERY_DB).info()["redis_version"]
    except Exception:  # noqa: BLE001
        info["redis-server"] = None
    return info


def find_mosquitto_exe() -> str:
    from tests.brokers import find_mosquitto

    return find_mosquitto() or "mosquitto"


SECTIONS = ["paho", "mqtt", "coordinator", "blackbox", "fleet", "amqtt", "dramatiq", "celery", "footprint"]


SECTIONS.append("coordinator-pg")  # bench/coord_pg.py: its own line, so that lists of sections merge


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (about a minute)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--runs", type=int, help="runs per figure (default 3)")
    parser.add_argument("--no-chart", action="store_true")
    parser.add_argument("--profile", action="store_true",
                        help="instead of the table: py-spy profiles of the mqtt-tasks hot path")
    args = parser.parse_args(argv)
    install_cleanup()
    from bench.fleetsim import raise_nofile

    raise_nofile()  # before Mosquitto starts: it inherits the limit (10,000 simulated workers)
    cfg = Config.make(args.quick)
    if args.runs:
        cfg.runs = max(1, args.runs)
    from tests.brokers import MosquittoProcess

    bench = Bench(cfg)
    t0 = time.monotonic()
    with MosquittoProcess() as mosquitto:
        bench.mosquitto = mosquitto
        print(f"Mosquitto (repo mosquitto.conf) on {mosquitto.url}; {'quick' if cfg.quick else 'full'} mode, "
              f"{cfg.runs} runs per figure", flush=True)
        if args.profile:
            from bench import profile

            profile.run(bench)
            return 0
        wanted = args.only or SECTIONS
        plan: list[tuple[str, str, Callable[[], None]]] = [
            ("paho", "ceiling: bare paho clients on Mosquitto", bench.bare_paho),
            ("mqtt", "mqtt-tasks on Mosquitto, no coordinator", bench.mqtt_tasks_mosquitto),
            ("coordinator", "mqtt-tasks on Mosquitto with the coordinator", bench.coordinator),
            ("blackbox", "latency from outside: mosquitto_pub -l -> mosquitto_sub, with and without the coordinator",
             bench.blackbox),
            ("fleet", "one coordinator, 200 and 10,000 simulated workers (30 s heartbeats)", bench.fleet),
            ("amqtt", "mqtt-tasks on the embedded amqtt broker (own process)", bench.mqtt_tasks_amqtt),
            ("dramatiq", "Dramatiq + Redis", bench.peers_dramatiq),
            ("celery", "Celery + Redis", bench.peers_celery),
            ("footprint", "worker footprint", bench.footprint),
            ("coordinator-pg", "the coordinator on PostgreSQL (HA), next to SQLite", lambda: coord_pg.run(bench)),
        ]
        for key, title, fn in plan:
            if key in wanted:
                bench.section(title, fn)
    bench.extra["wall_seconds"] = round(time.monotonic() - t0, 1)
    data = bench.report()
    if not args.no_chart:
        from bench.chart import render

        path = CHART if not cfg.quick else RESULTS / "bench-throughput-quick.png"
        m = data["machine"]
        render(bench.rows, path, f"mqtt-tasks bench, {m.get('cpus')} cores ({m.get('cpu', '?')}), "
                                 f"Python {m['python']}, {'quick' if cfg.quick else 'full'} mode")
        print(f"wrote {path}")
    print(f"total {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
