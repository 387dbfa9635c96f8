"""The coordinator under load: end-to-end throughput and latency with it recording every task,
its CPU seconds and memory per 10,000 tasks, its memory against the number of finished tasks
in its store, and 200 simulated workers heartbeating against it.

It runs as users run it: ``python -m mqtt_tasks coordinator --db FILE`` (SQLite store).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import clients
from bench.cluster import PY, Child, Procs, cpu_s, rss_mb
from bench.coord_pg import add_commit_rows, commit_counters
from bench.mqttwatch import Watch, online

SYSTEM = "mqtt-tasks + coordinator, Mosquitto"


def unavailable() -> str | None:
    """None when ``mqtt_tasks.coordinator.Coordinator`` and its CLI import; else why not."""
    try:
        from mqtt_tasks.cli import main  # noqa: F401
        from mqtt_tasks.coordinator import Coordinator  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return f"n/a (coordinator not available: {type(exc).__name__}: {exc})"
    return None


def start(url: str, prefix: str, db: Path) -> Child:
    watch = Watch(url, f"{prefix}/coordinator")
    try:
        child = Procs.start("coordinator", [PY, "-m", "mqtt_tasks", "coordinator", "--broker", url,
                                            "--prefix", prefix, "--db", str(db), "--log-level", "warning"])
        if watch.wait(online, 30) is None:
            raise RuntimeError(f"coordinator did not announce itself online within 30 s:\n{child.output()[-2000:]}")
        return child
    finally:
        watch.close()


def recorded(url: str, prefix: str) -> int | None:
    try:
        from mqtt_tasks import Settings
        from mqtt_tasks.coordinator import query_stats

        answer = query_stats(Settings.from_url(url, prefix=prefix), timeout=5.0)
        counts = answer.get("counts") or {}
        if isinstance(counts, dict) and counts:
            return int(sum(v for v in counts.values() if isinstance(v, int)))
        return int((answer.get("stats") or {}).get("recorded") or 0) or None
    except Exception:  # noqa: BLE001 - the figure is optional
        return None


def run_all(bench: Any) -> None:
    cfg = bench.cfg
    url = bench.mosquitto.url
    from bench.run import unique

    prefix = unique("co")
    tmp = Path(tempfile.mkdtemp(prefix="bench-coord-"))
    db = tmp / "tasks.db"
    coordinator = start(url, prefix, db)
    workers = bench.start_workers("mqtt-worker", url, prefix)
    client = clients.MqttTasksClient(url, prefix)
    try:
        cpu0, counters0 = cpu_s(coordinator.pid), commit_counters(url, prefix)
        bench.measure(SYSTEM, client, cfg.tasks, latency=False)
        tasks = min(500, cfg.tasks) + cfg.runs * cfg.tasks
        add_commit_rows(bench, SYSTEM, counters0, commit_counters(url, prefix), tasks)
        cpu_per_10k = (cpu_s(coordinator.pid) - cpu0) / tasks * 10_000
        bench.add("coordinator", "coordinator", "CPU/10k tasks", "CPU s", [cpu_per_10k],
                  f"over the {tasks:,} tasks of the throughput runs (one figure over all runs)")
        bench.add("coordinator", "coordinator", "RSS", "MB", [rss_mb(coordinator.pid)],
                  f"after {tasks:,} tasks")
        bench.measure_latency(SYSTEM, client)
        flatness(bench, client, coordinator, db, url, prefix)
        simulated_workers(bench, client, coordinator, url, prefix)
    finally:
        client.close()
        Procs.stop(*workers, coordinator)
        shutil.rmtree(tmp, ignore_errors=True)
    million(bench)


def prefill(db: Path, count: int, prefix: str) -> float:
    """Write ``count`` succeeded tasks into a new store, as the coordinator itself records them
    (same schema, same JSON); returns the seconds it took."""
    import json
    import sqlite3

    from mqtt_tasks.store.base import TaskRecord
    from mqtt_tasks.store.sqlite import SQLiteStore, _row

    SQLiteStore(str(db)).close()  # the schema
    t0 = time.monotonic()
    now = time.time() - 86_400
    template = TaskRecord(id="x", state="succeeded", task="noop", queue="default", created=now, updated=now,
                          body={"id": "x", "task": "noop", "args": [], "kwargs": {}}, worker="w0",
                          winner={"attempt": 1, "worker": "w0"}, started_at=now,
                          history=[{"state": "succeeded", "attempt": 1, "worker": "w0", "ts": now}])
    head = _row(template)
    data = json.loads(head[5])
    conn = sqlite3.connect(str(db), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    step = 50_000
    for start in range(0, count, step):
        rows = []
        for i in range(start, min(count, start + step)):
            task_id = f"{prefix}-old-{i:08d}"
            data["id"] = data["body"]["id"] = task_id
            rows.append((task_id, "succeeded", "default", now + i * 1e-3, now + i * 1e-3,
                         json.dumps(data, separators=(",", ":"))))
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO tasks (id, state, queue, updated, created, data) VALUES (?,?,?,?,?,?)", rows)
        conn.execute("COMMIT")
    conn.close()
    return time.monotonic() - t0


MILLION_RATE = 1000


def million(bench: Any) -> None:
    """The coordinator on a store that already holds 1 million finished tasks (50,000 in quick
    mode): its RSS at start and after each batch, against a coordinator on an empty store doing
    the same batches. Memory that grew with recorded tasks would show as the difference.

    The batches are paced (``MILLION_RATE`` tasks/s), not sent at once: RSS after a burst of
    20,000 follows how many of them happened to be in flight at its peak (Python keeps that
    memory in its arenas), which varied by 10 MB between otherwise identical runs and hid what
    this compares."""
    from bench.run import unique

    cfg = bench.cfg
    url = bench.mosquitto.url
    count = 50_000 if cfg.quick else 1_000_000
    batches = min(3, cfg.flat_batches)
    per_batch = max(cfg.flat_batch // 2, 1000)
    tmp = Path(tempfile.mkdtemp(prefix="bench-million-"))
    results = {}
    try:
        for label, rows in (("empty store", 0), (f"{count:,} recorded", count)):
            prefix = unique("mm")
            db = tmp / f"{rows}.db"
            took = prefill(db, rows, prefix) if rows else 0.0
            coordinator = start(url, prefix, db)
            workers = bench.start_workers("mqtt-worker", url, prefix)
            client = clients.MqttTasksClient(url, prefix)
            try:
                rss = [rss_mb(coordinator.pid)]
                for _ in range(batches):
                    run = client.latency(MILLION_RATE, per_batch / MILLION_RATE)
                    if run.done < per_batch:
                        raise RuntimeError(f"{label}: {run.done} of {per_batch} results")
                    time.sleep(0.5)  # the last events committed
                    rss.append(rss_mb(coordinator.pid))
                results[label] = rss
                print(f"    {label}: RSS {' -> '.join(f'{r:.1f}' for r in rss)} MB"
                      + (f" (store written in {took:.0f} s, {db.stat().st_size / 1e6:.0f} MB)" if rows else ""),
                      flush=True)
            finally:
                client.close()
                Procs.stop(*workers, coordinator)
        empty, full = results["empty store"], results[f"{count:,} recorded"]
        how = f"after each of {batches} batches of {per_batch:,} tasks at {MILLION_RATE:,}/s"
        bench.add("coordinator", f"coordinator, {count:,} recorded tasks", "RSS", "MB", full[1:],
                  f"{how}; at start {full[0]:.1f} MB")
        bench.add("coordinator", "coordinator, empty store", "RSS", "MB", empty[1:],
                  f"{how}; at start {empty[0]:.1f} MB")
        bench.add("coordinator", f"coordinator, {count:,} recorded tasks", "RSS over empty", "MB",
                  [f - e for f, e in zip(full[1:], empty[1:], strict=True)],
                  "the same batches; what the recorded tasks cost in memory")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def flatness(bench: Any, client: Any, coordinator: Child, db: Path, url: str, prefix: str) -> None:
    """RSS after each batch of finished tasks; the slope after the first batch is the growth."""
    cfg = bench.cfg
    points = []
    done = 0
    for _ in range(cfg.flat_batches):
        run = client.throughput(cfg.flat_batch)
        done += run.done
        time.sleep(0.5)  # let the coordinator commit the last events
        points.append({"tasks_this_phase": done, "rss_mb": round(rss_mb(coordinator.pid), 2),
                       "db_mb": round(db.stat().st_size / 1e6 if db.exists() else 0, 2),
                       "recorded": recorded(url, prefix)})
        print(f"    flatness: {points[-1]}", flush=True)
    bench.extra["coordinator_flatness"] = points
    if len(points) >= 2:
        span = points[-1]["tasks_this_phase"] - points[0]["tasks_this_phase"]
        growth = (points[-1]["rss_mb"] - points[0]["rss_mb"]) / span * 10_000 if span else float("nan")
        total = points[-1]["recorded"] or "?"
        bench.add("coordinator", "coordinator", "RSS growth/10k", "MB/10k", [growth],
                  f"RSS {points[0]['rss_mb']:.1f} -> {points[-1]['rss_mb']:.1f} MB while the store grew to "
                  f"{total} recorded tasks ({points[-1]['db_mb']:.0f} MB SQLite); batches of {cfg.flat_batch:,}")


def simulated_workers(bench: Any, client: Any, coordinator: Child, url: str, prefix: str) -> None:
    cfg = bench.cfg
    system = f"coordinator + {cfg.sim_workers} sim. workers"
    sims = Procs.role("sim-workers", "--broker", url, "--prefix", prefix, "--count", str(cfg.sim_workers),
                      "--heartbeat", "2", name="sim-workers")
    try:
        sims.wait_ready(60)
        time.sleep(2.5)  # every simulated worker has sent a heartbeat
        cpu0, t0 = cpu_s(coordinator.pid), time.monotonic()
        time.sleep(cfg.sim_seconds)
        pct = (cpu_s(coordinator.pid) - cpu0) / (time.monotonic() - t0) * 100
        bench.add("scale", system, "CPU", "%", [pct],
                  f"{sims.info.get('connected')} connections, heartbeat every 2 s, over {cfg.sim_seconds:g} s idle")
        bench.add("scale", system, "RSS", "MB", [rss_mb(coordinator.pid)])
        runs = [client.throughput(max(1000, cfg.tasks // 4)) for _ in range(cfg.runs)]
        bench.add("scale", system, "throughput", "tasks/s", [r.rate if r.complete else float("nan") for r in runs],
                  f"{max(1000, cfg.tasks // 4):,} tasks while the simulated workers heartbeat")
    finally:
        Procs.stop(sims)
