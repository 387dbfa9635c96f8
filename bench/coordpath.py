"""The coordinator's per-task path in-process, without a network: CPU microseconds per task.

``python -m bench.coordpath [--tasks N] [--batch B] [--rounds R] [--trees DIR ...] [--instructions]``

A real ``Coordinator`` (handlers, records, timers, backlog, effects, the loop's batch step) around
a real ``SQLiteStore`` in a temporary directory, with a connection that goes nowhere (publishes
and acks are counted and dropped). It is fed the messages a no-op task brings, as the loop takes
them off its queue: the task on ``P/tasks/default`` (with a ``reply_to``, a ``receipt_to`` and a
random 32-hex-digit id, as ``TaskApp.send`` builds it), then the worker's ``started`` and
``succeeded`` on ``P/status/{id}``, each in the next batch (``--spread 3``: three commits per task,
the most a no-op task costs) or both in one (``--spread 2``). Each batch is one
``Loop._process``: prefetch, decide, commit, ack, publish. Payloads are encoded before the clock
starts; the figure is ``time.process_time()`` of the batches, divided by the tasks, the median of
``--rounds`` (each round a fresh store).

Wall clock and even CPU time swing with the machine's load (other sessions' tests: ±30 %), so:

- ``--trees A B``: run this script once per round in each tree's code (``PYTHONPATH`` set to the
  tree, in a child process), alternating A, B, A, B, ...; a load that comes and goes lands on
  both. Prints each tree's median and minimum.
- ``--instructions``: count the instructions of the same work under callgrind (deterministic, the
  machine's load does not enter): one child with ``N`` tasks, one that builds the same messages
  and decides none (``--dry``), the difference per task. Slow (about a minute per 1,000 tasks and
  tree): use a small ``--tasks``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
PREFIX = "bench"
WORKER = "bench-w0"


class NullConnection:
    """A ``ConnectionLike`` that sends nothing: what the loop publishes and acknowledges is counted."""

    def __init__(self) -> None:
        self.published = 0
        self.acked = 0

    def subscribe(self, topic_filter: str, qos: int = 1) -> None: ...

    def connect(self, timeout: float | None = None) -> None: ...

    def publish(self, topic: str, payload: bytes, **options: Any) -> None:
        self.published += 1

    def ack_many(self, messages: Any) -> None:
        self.acked += len(messages)

    def close(self, flush_timeout: float = 5.0) -> None: ...


def messages(n: int, spread: int) -> list[list[Any]]:
    """The batches' messages, ready for the loop: group g's tasks with group g-1's ``started`` and
    group g-2's ``succeeded`` (``spread`` 3), or g-1's ``started`` and ``succeeded`` (``spread`` 2)."""
    from mqtt_tasks.app import TaskOptions, task_body
    from mqtt_tasks.coordinator.loop import MSG
    from mqtt_tasks.protocol import codec, events
    from mqtt_tasks.protocol.rpc import receipts_topic
    from mqtt_tasks.protocol.topics import Topics
    from mqtt_tasks.transport import Message

    topics, opts, now = Topics(PREFIX), TaskOptions(), time.time()
    mid = iter(range(1, 1 << 30))
    rng = random.Random(n)  # ids as TaskApp makes them (uuid4 hex): spread over the primary key's index
    ids = [f"{rng.getrandbits(128):032x}" for _ in range(n)]

    def msg(topic: str, obj: dict[str, Any]) -> Any:
        return (MSG, Message(topic, codec.encode(obj), 1, False, next(mid), 1))

    def task(i: int) -> Any:
        body = task_body(ids[i], "noop", [], {}, opts, topics.replies("bench-p"),
                         receipts_topic(topics.replies("bench-p")), None)
        return msg(topics.tasks("default"), body)

    def status(i: int, state: str) -> Any:
        extra = {"result": None} if state == "succeeded" else {}
        event = events.status_event(ids[i], state, 1, now, worker=WORKER, task="noop", queue="default", **extra)
        return msg(topics.status(ids[i]), event)

    groups = [range(start, min(start + BATCH[0], n)) for start in range(0, n, BATCH[0])]
    batches: list[list[Any]] = []
    for g in range(len(groups) + spread - 1):
        batch = [task(i) for i in groups[g]] if g < len(groups) else []
        if 0 <= g - 1 < len(groups):
            batch += [status(i, "started") for i in groups[g - 1]]
        if 0 <= g - (spread - 1) < len(groups):
            batch += [status(i, "succeeded") for i in groups[g - (spread - 1)]]
        batches.append(batch)
    return batches


BATCH = [100]  # tasks per group: set by main (module-level so ``messages`` stays a plain function)


def one_round(n: int, spread: int, dry: bool = False) -> dict[str, float]:
    """Feed ``n`` tasks through a fresh coordinator and store; CPU and wall time of the batches.
    ``dry``: everything but the batches (callgrind's baseline)."""
    from mqtt_tasks.config import Settings
    from mqtt_tasks.coordinator import Coordinator
    from mqtt_tasks.coordinator.loop import CONNECTED
    from mqtt_tasks.store.sqlite import SQLiteStore

    batches = messages(n, spread)
    with tempfile.TemporaryDirectory(prefix="bench-coordpath-") as tmp:
        store = SQLiteStore(os.path.join(tmp, "tasks.db"))
        conn = NullConnection()
        coordinator = Coordinator(Settings(prefix=PREFIX), store, connection=conn)
        loop = coordinator._loop  # noqa: SLF001 - the bench drives the loop's batch step itself
        loop._process([(CONNECTED, True)])  # noqa: SLF001
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for batch in [] if dry else batches:
            loop._process(batch)  # noqa: SLF001
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        counts = store.counts()
        store.close()
    if not dry and (counts.get("succeeded") != n or conn.acked != 3 * n):
        raise RuntimeError(f"the path lost work: {counts}, {conn.acked} acks for {n} tasks")
    return {"cpu_us": cpu / n * 1e6, "wall_us": wall / n * 1e6, "published": conn.published / n}


def in_tree(tree: str, argv: list[str]) -> dict[str, Any]:
    """This script's ``--json`` output, run with ``tree``'s code (its ``mqtt_tasks`` first on the path)."""
    env = {**os.environ, "PYTHONPATH": tree, "PYTHONHASHSEED": "0"}
    out = subprocess.run([sys.executable, str(SCRIPT), "--json", *argv], env=env, cwd=tree, check=True,
                         capture_output=True, text=True).stdout
    return dict(json.loads(out.splitlines()[-1]))


def instructions(tree: str, argv: list[str]) -> float:
    """Instructions per task under callgrind: a run of N tasks less a dry run (imports, set-up,
    the messages built, no batch decided), divided by N."""
    def count(dry: list[str]) -> int:
        env = {**os.environ, "PYTHONPATH": tree, "PYTHONHASHSEED": "0"}
        with tempfile.TemporaryDirectory(prefix="bench-callgrind-") as tmp:
            command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out", sys.executable,
                       str(SCRIPT), "--json", "--rounds", "1", *argv, *dry]
            run = subprocess.run(command, env=env, cwd=tree, check=True, capture_output=True, text=True)
        found = re.search(r"Collected : (\d+)", run.stderr)
        if found is None:
            raise RuntimeError(f"no instruction count from callgrind: {run.stderr[-500:]}")
        return int(found.group(1))

    return (count([]) - count(["--dry"])) / int(argv[argv.index("--tasks") + 1])


def compare(trees: list[str], argv: list[str], rounds: int, count: bool) -> None:
    """Each tree's figures, alternated round by round."""
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in trees}
    for r in range(rounds):
        for tree in trees:
            runs[tree].append(in_tree(tree, [*argv, "--rounds", "1"]))
            print(f"round {r + 1} {tree}: {runs[tree][-1]['cpu_us']:.1f} CPU us per task", flush=True)
    for tree in trees:
        cpu = [run["cpu_us"] for run in runs[tree]]
        line = f"{tree}: CPU us per task median {statistics.median(cpu):.1f}, min {min(cpu):.1f}"
        if count:
            line += f"; instructions per task {instructions(tree, argv):,.0f}"
        print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.coordpath", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=100, help="tasks per batch (each batch holds 3x messages)")
    parser.add_argument("--spread", type=int, choices=(2, 3), default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--trees", nargs="+", help="compare these source trees, alternated")
    parser.add_argument("--instructions", action="store_true", help="count instructions under callgrind")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dry", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    BATCH[0] = args.batch
    shared = ["--tasks", str(args.tasks), "--batch", str(args.batch), "--spread", str(args.spread)]
    if args.trees:
        compare(args.trees, shared, args.rounds, args.instructions)
        return 0
    runs = [one_round(args.tasks, args.spread, args.dry) for _ in range(args.rounds)]
    result = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.tasks} tasks, batches of {args.batch}, spread {args.spread}, median of {args.rounds}: "
          f"{result['cpu_us']:.1f} CPU us per task ({result['wall_us']:.1f} wall), "
          f"{result['published']:.2f} messages published per task")
    if args.instructions:
        print(f"instructions per task: {instructions(os.getcwd(), shared):,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
