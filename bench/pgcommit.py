"""One store commit, timed in-process: SQLite next to PostgreSQL, with the leadership fence on.

Each step is what the coordinator's loop does per batch (``coordinator/loop.py``): ``prefetch``
the batch's ids (one SELECT), ``put`` one record per task, ``commit`` (BEGIN, the lease's renewal,
the upserts, COMMIT). Reported per batch size: the median milliseconds of prefetch + commit, the
CPU milliseconds of this process in them (in production the coordinator's: the driver's work is
the client's), and on PostgreSQL the round trips, counted from libpq's own protocol trace (a
round trip is a switch from the client's messages to the server's). Records are built before the
clock starts.

``python -m bench.pgcommit [--batches 1 10 100 1000] [--rounds 30]``; the ``coordinator-pg``
section of ``python -m bench`` runs it too. Needs PostgreSQL on 127.0.0.1:5432 (trust auth, user
postgres; ``MQTT_TASKS_POSTGRES`` names another admin URL): a database of its own is created and
dropped.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BATCHES = (1, 10, 100, 1000)


def record(task_id: str) -> Any:
    """A record as the coordinator writes one for a task that finished (history and winner set)."""
    from mqtt_tasks.store.base import TaskRecord

    now = time.time()
    return TaskRecord(id=task_id, state="succeeded", task="noop", queue="default", created=now, updated=now,
                      body={"id": task_id, "task": "noop", "args": [], "kwargs": {}}, worker="w0",
                      winner={"attempt": 1, "worker": "w0"}, started_at=now,
                      history=[{"state": "running", "attempt": 1, "worker": "w0", "ts": now},
                               {"state": "succeeded", "attempt": 1, "worker": "w0", "ts": now}])


def traced(store: Any, work: Callable[[], Any]) -> str:
    """libpq's protocol trace of ``store``'s PostgreSQL connection while ``work()`` runs."""
    conn = store._db._live()  # noqa: SLF001 - the bench reads the driver's connection
    with tempfile.TemporaryDirectory(prefix="bench-trace-") as tmp:
        path = Path(tmp) / "libpq.trace"
        with path.open("w") as out:
            conn.pgconn.trace(out.fileno())
            try:
                work()
            finally:
                conn.pgconn.untrace()  # flushes libpq's stream
        return path.read_text(errors="replace")


def round_trips(trace: str) -> int:
    """How often the trace turns from client messages (F) to server messages (B)."""
    trips, last = 0, ""
    for line in trace.splitlines():
        parts = line.split("\t")
        side = next((p for p in parts if p in ("F", "B")), "")
        if side == "B" and last == "F":
            trips += 1
        last = side or last
    return trips


def one_batch(store: Any, ids: list[str]) -> tuple[float, float]:
    """(wall ms, this process's CPU ms) of one prefetch + put + commit."""
    records = [record(i) for i in ids]
    t0, cpu0 = time.perf_counter(), time.process_time()
    store.prefetch(ids)
    for r in records:
        store.put(r)
    store.commit()
    return (time.perf_counter() - t0) * 1e3, (time.process_time() - cpu0) * 1e3


def measure(store: Any, batch: int, rounds: int, tag: str) -> dict[str, float]:
    """Median ms per batch (prefetch + commit) and, on PostgreSQL, round trips per batch."""
    from mqtt_tasks.store.leadership import Lease
    from mqtt_tasks.store.postgres import PostgresStore

    lease = Lease(store, "bench", "bench")
    if not lease.acquire():
        raise RuntimeError("the bench's store has a leader already")
    store.fence = lease
    runs = [one_batch(store, [f"{tag}-{r}-{i}" for i in range(batch)]) for r in range(rounds)]
    wall, cpu = statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)
    out = {"ms": wall, "ms_per_task": wall / batch, "cpu_ms": cpu}
    if isinstance(store, PostgresStore):
        trace = traced(store, lambda: one_batch(store, [f"{tag}-traced-{i}" for i in range(batch)]))
        out["round_trips"] = round_trips(trace)
    store.fence = None
    lease.release()
    return out


def run(batches: tuple[int, ...] = BATCHES, rounds: int = 30) -> dict[str, dict[int, dict[str, float]]]:
    """{"sqlite" | "postgres": {batch size: figures}}; each store in a directory or database of its own."""
    from mqtt_tasks.store.postgres import PostgresStore
    from mqtt_tasks.store.sqlite import SQLiteStore
    from tests.postgres import private_database

    results: dict[str, dict[int, dict[str, float]]] = {"sqlite": {}, "postgres": {}}
    with tempfile.TemporaryDirectory(prefix="bench-pgcommit-") as tmp, private_database() as url:
        sqlite, postgres = SQLiteStore(os.path.join(tmp, "tasks.db")), PostgresStore(url)
        try:
            for batch in batches:
                results["sqlite"][batch] = measure(sqlite, batch, rounds, f"b{batch}")
                results["postgres"][batch] = measure(postgres, batch, rounds, f"b{batch}")
        finally:
            sqlite.close()
            postgres.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pgcommit", description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    results = run(tuple(args.batches), args.rounds)
    print(f"{'batch':>6} {'SQLite ms':>10} {'(CPU ms)':>9} {'PostgreSQL ms':>14} {'(CPU ms)':>9} {'ratio':>6} "
          f"{'PG round trips':>15}")
    for batch in args.batches:
        lite, pg = results["sqlite"][batch], results["postgres"][batch]
        print(f"{batch:>6} {lite['ms']:>10.2f} {lite['cpu_ms']:>9.2f} {pg['ms']:>14.2f} {pg['cpu_ms']:>9.2f} "
              f"{pg['ms'] / lite['ms']:>6.1f} {pg.get('round_trips', 0):>15.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
