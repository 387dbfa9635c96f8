"""The peers on the same machine and workload: Dramatiq and Celery, each with Redis as broker and
result backend, 2 worker processes. Redis DBs 9 (Celery) and 10 (Dramatiq) are flushed before
and after; no other DB is touched.

Every configuration listed in the bench config is measured for throughput; the best one also
for latency, and it is the one the ratios use.
"""

from __future__ import annotations

from typing import Any

from bench import clients
from bench.cluster import PY, Child, Procs

REDIS = "redis://127.0.0.1:6379"


def flush(db: int) -> None:
    import redis

    assert db not in (0,), "never flush DB 0"
    redis.Redis("127.0.0.1", 6379, db=db, socket_timeout=5).flushdb()


def _run_config(bench: Any, system: str, children: list[Child], ready: list[tuple[str, int]], client: Any,
                n: int) -> float | None:
    try:
        for child, (marker, count) in zip(children, ready, strict=True):
            child.wait_ready(90, marker=marker, count=count)
        return bench.measure(system, client, n, latency=False)
    finally:
        Procs.stop(*children)


def dramatiq(bench: Any) -> None:
    from bench.run import DRAMATIQ_DB

    env = {"BENCH_DRAMATIQ_REDIS": f"{REDIS}/{DRAMATIQ_DB}"}
    results: dict[tuple[int, int], float] = {}
    flush(DRAMATIQ_DB)
    try:
        client = clients.DramatiqClient()
        for procs, threads in bench.cfg.dramatiq_configs:
            system = f"Dramatiq + Redis ({procs} proc x {threads} thr)"
            child = Procs.start("dramatiq", [PY, "-m", "dramatiq", "bench.dramatiq_app", "-p", str(procs),
                                             "-t", str(threads)], env=env)
            rate = _run_config(bench, system, [child], [("ready for action", procs)], client,
                               bench.cfg.peer_tasks)
            results[(procs, threads)] = rate or 0.0
            flush(DRAMATIQ_DB)
        procs, threads = max(results, key=lambda k: results[k])
        bench.extra["dramatiq_best"] = f"{procs} processes x {threads} threads"
        system = f"Dramatiq + Redis ({procs} proc x {threads} thr)"
        child = Procs.start("dramatiq", [PY, "-m", "dramatiq", "bench.dramatiq_app", "-p", str(procs),
                                         "-t", str(threads)], env=env)
        try:
            child.wait_ready(90, marker="ready for action", count=procs)
            client.throughput(200)
            bench.measure_latency(system, client)
        finally:
            Procs.stop(child)
    finally:
        flush(DRAMATIQ_DB)


def _celery_children(spec: str, env: dict[str, str]) -> tuple[str, list[Child]]:
    pool, _, shape = spec.partition(":")
    base = [PY, "-m", "celery", "-A", "bench.celery_app", "worker", "--loglevel", "WARNING",
            "--without-gossip", "--without-mingle", "--without-heartbeat"]
    if pool == "prefork":
        n = int(shape)
        return (f"Celery + Redis (prefork, {n} proc)",
                [Procs.start("celery", [*base, "-P", "prefork", "-c", str(n), "-n", "w1@%h"], env=env)])
    procs, _, threads = shape.partition("x")
    children = [Procs.start(f"celery{i}", [*base, "-P", "threads", "-c", threads, "-n", f"w{i}@%h"], env=env)
                for i in range(int(procs))]
    return f"Celery + Redis ({procs} proc x {threads} thr)", children


def celery(bench: Any) -> None:
    from bench.run import CELERY_DB

    env = {"BENCH_CELERY_REDIS": f"{REDIS}/{CELERY_DB}"}
    flush(CELERY_DB)
    results: dict[str, float] = {}
    try:
        client = clients.CeleryClient()
        for spec in bench.cfg.celery_configs:
            system, children = _celery_children(spec, env)
            rate = _run_config(bench, system, children, [("READY", 1)] * len(children), client,
                               bench.cfg.celery_tasks)
            results[spec] = rate or 0.0
            flush(CELERY_DB)
        best = max(results, key=lambda k: results[k])
        system, children = _celery_children(best, env)
        bench.extra["celery_best"] = system
        try:
            for child in children:
                child.wait_ready(90)
            client.throughput(100)
            bench.measure_latency(system, client)
        finally:
            Procs.stop(*children)
    finally:
        flush(CELERY_DB)
