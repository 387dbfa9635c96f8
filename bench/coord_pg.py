"""The coordinator on PostgreSQL, next to SQLite in the same run (section ``coordinator-pg``).

The same system as the ``coordinator`` section (Mosquitto, 2 ``mqtt-worker`` processes, the
producer in the bench process), with the coordinator run as users run it on PostgreSQL:
``python -m mqtt_tasks coordinator --db postgresql://postgres@127.0.0.1:5432/<own database>``,
high availability on (the default for a ``postgresql://`` URL: a lease row, every commit fenced).
The database is created for the section and dropped after it (``tests/postgres.py``;
``MQTT_TASKS_POSTGRES`` names another server's admin URL).

Figures: throughput and latency with one coordinator (the leader), then throughput with a
standby coordinator on the same prefix and database; the leader's CPU and its PostgreSQL server
process's CPU per 10,000 tasks; commits per run and the mean commit time, from the coordinator's
own counters (``stats``: ``commits``, ``commit_us``; the ``coordinator`` section reports the same
for SQLite); and ``bench.pgcommit``: one commit timed in-process on both stores, by batch size,
with PostgreSQL's round trips per commit.
"""

from __future__ import annotations

from typing import Any

from bench import clients
from bench.cluster import PY, Child, Procs, cpu_s
from bench.mqttwatch import Watch, online

SYSTEM = "mqtt-tasks + coordinator on PostgreSQL, Mosquitto"
STANDBY_SYSTEM = "mqtt-tasks + PostgreSQL leader + 1 standby"


def unavailable() -> str | None:
    """None when psycopg imports and the server at the admin URL answers; else why not."""
    try:
        import psycopg

        from tests.postgres import ADMIN_URL

        with psycopg.connect(ADMIN_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001
        return f"n/a (PostgreSQL not available: {type(exc).__name__}: {' '.join(str(exc).split())[:120]})"
    return None


def start(url: str, prefix: str, db: str, name: str, *, leader: bool) -> Child:
    """A coordinator on ``db``; the leader is waited for online on ``P/coordinator``, a standby
    for its ``ready`` line (it stands by)."""
    watch = Watch(url, f"{prefix}/coordinator") if leader else None
    try:
        child = Procs.start(f"coordinator-{name}", [PY, "-m", "mqtt_tasks", "coordinator", "--broker", url,
                                                    "--prefix", prefix, "--db", db, "--name", name,
                                                    "--log-level", "warning"])
        if watch is not None and watch.wait(online, 30) is None:
            raise RuntimeError(f"coordinator {name} did not announce itself online within 30 s:\n"
                               f"{child.output()[-2000:]}")
        child.wait_ready(30, marker="coordinator ready")
        return child
    finally:
        if watch is not None:
            watch.close()


def commit_counters(url: str, prefix: str) -> tuple[int, int]:
    """(commits, microseconds spent committing) so far, from the coordinator's ``stats``."""
    from mqtt_tasks import Settings
    from mqtt_tasks.coordinator import query_stats

    stats = query_stats(Settings.from_url(url, prefix=prefix), timeout=5.0).get("stats") or {}
    return int(stats.get("commits") or 0), int(stats.get("commit_us") or 0)


def add_commit_rows(bench: Any, system: str, before: tuple[int, int], after: tuple[int, int], tasks: int) -> None:
    """Tasks per commit and the mean commit time between two ``commit_counters`` readings."""
    commits, micros = after[0] - before[0], after[1] - before[1]
    if commits <= 0:
        bench.na("commits", system, "tasks/commit", "tasks", "no commit counted")
        return
    bench.add("commits", system, "tasks/commit", "tasks", [tasks / commits],
              f"{commits:,} commits over {tasks:,} tasks")
    bench.add("commits", system, "commit time", "ms", [micros / commits / 1000],
              "mean, the store's commit() as the coordinator's loop times it")


def server_pids(database: str) -> list[int]:
    """The PostgreSQL server processes serving ``database`` (one per coordinator)."""
    import psycopg

    from tests.postgres import ADMIN_URL

    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        rows = admin.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,)).fetchall()
    return [int(pid) for (pid,) in rows]


def total_cpu(pids: list[int]) -> float:
    return sum(cpu_s(pid) for pid in pids)


def run(bench: Any) -> None:
    from bench.run import unique
    from tests.postgres import private_database

    why = unavailable()
    if why:
        for system in (SYSTEM, STANDBY_SYSTEM):
            bench.na("throughput", system, "throughput", "tasks/s", why)
        return
    with private_database() as db:
        leader_and_standby(bench, db, unique("pg"))
    commit_profile(bench)


def leader_and_standby(bench: Any, db: str, prefix: str) -> None:
    cfg, url = bench.cfg, bench.mosquitto.url
    leader = start(url, prefix, db, "leader", leader=True)
    workers = bench.start_workers("mqtt-worker", url, prefix)
    client = clients.MqttTasksClient(url, prefix)
    standby: Child | None = None
    try:
        servers = server_pids(db.rsplit("/", 1)[1])
        cpu0, server0, counters0 = cpu_s(leader.pid), total_cpu(servers), commit_counters(url, prefix)
        bench.measure(SYSTEM, client, cfg.tasks, latency=False)
        tasks = min(500, cfg.tasks) + cfg.runs * cfg.tasks
        note = f"over the {tasks:,} tasks of the throughput runs (one figure over all runs)"
        bench.add("coordinator", "coordinator on PostgreSQL", "CPU/10k tasks", "CPU s",
                  [(cpu_s(leader.pid) - cpu0) / tasks * 10_000], note)
        bench.add("coordinator", "its PostgreSQL server process", "CPU/10k tasks", "CPU s",
                  [(total_cpu(servers) - server0) / tasks * 10_000], note)
        add_commit_rows(bench, SYSTEM, counters0, commit_counters(url, prefix), tasks)
        bench.measure_latency(SYSTEM, client)
        standby = start(url, prefix, db, "standby", leader=False)
        bench.measure(STANDBY_SYSTEM, client, cfg.tasks, latency=False)
        if leader.proc.poll() is not None or standby.proc.poll() is not None:
            raise RuntimeError("a coordinator exited during the standby runs")
    finally:
        client.close()
        Procs.stop(*workers, *([standby] if standby else []), leader)


def commit_profile(bench: Any) -> None:
    from bench import pgcommit

    results = pgcommit.run(rounds=10 if bench.cfg.quick else 30)
    bench.extra["pgcommit"] = results
    for batch in pgcommit.BATCHES:
        lite, pg = results["sqlite"][batch], results["postgres"][batch]
        bench.add("commits", f"one commit of {batch:,} tasks, SQLite", "prefetch+commit", "ms", [lite["ms"]],
                  "in-process, fence on, median")
        bench.add("commits", f"one commit of {batch:,} tasks, PostgreSQL", "prefetch+commit", "ms", [pg["ms"]],
                  f"{pg['ms'] / lite['ms']:.1f}x SQLite; {pg['round_trips']:.0f} round trips; client CPU "
                  f"{pg['cpu_ms']:.2f} ms (SQLite {lite['cpu_ms']:.2f} ms)")
