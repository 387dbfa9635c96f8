"""``mqtt-tasks demo``: an embedded broker, a few workers, a few hundred tasks, the figures.

``run_demo`` does the work and returns a ``DemoResult``; ``progress_bar`` and
``render_result`` draw it with rich (imported lazily: the demo extra). Latency is measured
from just before a task is published to the arrival of its final status event on
``P/status/+``; "tasks per worker" counts the ``worker`` field of those final events.

With ``kill_worker=True`` the workers run as child processes and one of them is killed with
SIGKILL once a third of the tasks are done: with a coordinator among the services its tasks
are dispatched again (``redispatched`` counts final events of attempt 2 or later) and none is
lost (``missing``).

The coordinator joins through ``services``: each is a callable taking the demo's
``Settings`` and returning a context manager, entered after the broker starts and before the
workers, left after they stop. For example (once ``mqtt_tasks.coordinator`` lands)::

    run_demo(services=[lambda settings: Coordinator(settings, store=MemoryStore())])
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import queue
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from .app import TaskApp, TaskOptions
from .config import Settings
from .errors import DecodeError
from .protocol import codec
from .protocol.messages import TERMINAL_STATES, StatusEvent
from .transport import Connection
from .worker import Worker

log = logging.getLogger(__name__)

Service = Callable[[Settings], AbstractContextManager[Any]]
ProgressCallback = Callable[[int, int], None]


@dataclass
class DemoResult:
    tasks: int
    succeeded: int
    failed: int
    missing: int
    elapsed_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    per_worker: dict[str, int] = field(default_factory=dict)
    expected_failures: int = 0
    broker_url: str = ""
    redispatched: int = 0
    killed: str | None = None

    @property
    def throughput(self) -> float:
        """Completed tasks per second, from the first publish to the last final event."""
        done = self.succeeded + self.failed
        return done / self.elapsed_s if self.elapsed_s > 0 else 0.0


# -- the example tasks ---------------------------------------------------------------------
def build_demo_app(settings: Settings) -> TaskApp:
    app = TaskApp(settings=settings, client_id=f"demo-producer-{uuid.uuid4().hex[:6]}")

    @app.task
    def add(a: float, b: float) -> float:
        return a + b

    @app.task
    def checksum(text: str, rounds: int = 200) -> str:
        digest = text.encode()
        for _ in range(rounds):
            digest = hashlib.sha256(digest).digest()
        return digest.hex()[:16]

    @app.task
    async def nap(ms: float) -> float:
        await asyncio.sleep(ms / 1000)
        return ms

    @app.task
    def divide(a: float, b: float) -> float:
        return a / b  # the demo sends b=0 now and then: failures are reported, not lost

    return app


def demo_plan(count: int, fail_every: int) -> list[tuple[str, list[Any]]]:
    """A deterministic mix of the example tasks; every ``fail_every``-th one divides by zero."""
    plan: list[tuple[str, list[Any]]] = []
    for i in range(count):
        if fail_every and i % fail_every == fail_every - 1:
            plan.append(("divide", [i, 0]))
        else:
            mix: list[tuple[str, list[Any]]] = [("add", [i, i]), ("checksum", [f"task-{i}"]),
                                                ("nap", [40 + i % 80]), ("divide", [i, 2])]
            plan.append(mix[i % 4])
    return plan


# -- the run -------------------------------------------------------------------------------
class _Finals:
    """Collects the first final status event of every task, timestamped on arrival."""

    def __init__(self, settings: Settings) -> None:
        self._inbox: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()
        self.events: dict[str, tuple[float, StatusEvent]] = {}
        self._settings = settings
        self.conn = Connection(settings, f"demo-monitor-{uuid.uuid4().hex[:6]}",
                               on_message=lambda m: self._inbox.put((time.monotonic(), m.payload)))
        self.conn.subscribe(f"{settings.prefix}/status/+")

    def drain(self, wait: float) -> None:
        try:
            item = self._inbox.get(timeout=wait)
        except queue.Empty:
            return
        while True:
            self._take(*item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _take(self, arrived: float, payload: bytes) -> None:
        try:
            event = codec.decode_status(payload, max_payload=self._settings.max_payload)
        except DecodeError as exc:
            log.warning("demo: undecodable status event: %s", exc.reason)
            return
        if (event.final or event.state in TERMINAL_STATES) and event.id not in self.events:
            self.events[event.id] = (arrived, event)


@contextmanager
def _embedded_broker() -> Iterator[str]:
    from .broker import EmbeddedBroker  # the optional extra, imported only when needed

    with EmbeddedBroker("127.0.0.1", 0) as broker:
        yield broker.url + "?protocol=3.1.1"  # amqtt speaks MQTT 3.1.1 only


def run_demo(
    workers: int = 3,
    tasks: int = 300,
    *,
    concurrency: int = 8,
    fail_every: int = 50,
    timeout: float = 60.0,
    broker_url: str | None = None,
    prefix: str = "mqtt-tasks",
    services: Sequence[Service] = (),
    on_progress: ProgressCallback | None = None,
    kill_worker: bool = False,
) -> DemoResult:
    """Run ``tasks`` example tasks on ``workers`` workers; an embedded broker unless ``broker_url``.

    Workers run in this process, or as child processes with ``kill_worker`` (one is killed
    with SIGKILL a third of the way through).
    """
    with ExitStack() as stack:
        url = broker_url or stack.enter_context(_embedded_broker())
        settings = Settings.from_url(url, prefix=prefix)
        for service in services:
            stack.enter_context(service(settings))
        app = build_demo_app(settings)
        stack.callback(app.close)
        children = _start_workers(stack, app, url, prefix, workers, concurrency, kill_worker)
        finals = _Finals(settings)
        stack.callback(finals.conn.close)
        finals.conn.connect()
        plan = demo_plan(tasks, fail_every)
        submitted, started = _submit(app, plan)
        _collect(finals, set(submitted), timeout, on_progress, children.kill_one if children else None)
    result = _result(plan, submitted, started, finals, settings.display_url)
    result.killed = children.killed if children else None
    return result


def _start_workers(stack: ExitStack, app: TaskApp, url: str, prefix: str, count: int, concurrency: int,
                   as_processes: bool) -> _WorkerProcesses | None:
    if as_processes:
        children = _WorkerProcesses(url, prefix, count, concurrency)
        stack.callback(children.close)
        return children
    for i in range(count):
        worker = Worker(app, worker_id=f"demo-worker-{i + 1}", concurrency=concurrency, grace=5.0)
        worker.start()
        stack.callback(worker.stop)
    return None


_ON_PURPOSE = TaskOptions(max_attempts=1)  # a division by zero fails the same way every time


def _submit(app: TaskApp, plan: list[tuple[str, list[Any]]]) -> tuple[dict[str, float], float]:
    submitted: dict[str, float] = {}
    started = time.monotonic()
    for name, args in plan:
        task_id = uuid.uuid4().hex
        submitted[task_id] = time.monotonic()
        on_purpose = name == "divide" and args[1] == 0
        app.send(name, args, task_id=task_id, options=_ON_PURPOSE if on_purpose else None)
    return submitted, started


def _collect(finals: _Finals, ids: set[str], timeout: float, on_progress: ProgressCallback | None,
             at_third: Callable[[], None] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        finals.drain(0.1)
        done = len(ids & finals.events.keys())
        if at_third is not None and done >= len(ids) // 3:
            at_third()
            at_third = None
        if on_progress is not None:
            on_progress(done, len(ids))
        if done == len(ids):
            return


class _WorkerProcesses:
    """Demo workers as child processes (``python -m mqtt_tasks.demo``), so one can really die."""

    def __init__(self, url: str, prefix: str, count: int, concurrency: int) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        for i in range(count):
            worker_id = f"demo-worker-{i + 1}"
            self.procs[worker_id] = subprocess.Popen(
                [sys.executable, "-m", "mqtt_tasks.demo", url, prefix, worker_id, str(concurrency)],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        for worker_id, proc in self.procs.items():
            line = proc.stdout.readline() if proc.stdout else b""
            if not line.startswith(b"ready"):
                self.close()
                raise RuntimeError(f"demo worker {worker_id} did not start (exit code {proc.poll()})")
        self.killed: str | None = None

    def kill_one(self) -> None:
        worker_id, proc = next(iter(self.procs.items()))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.killed = worker_id
        log.info("demo: killed %s (pid %d) mid-run", worker_id, proc.pid)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def _serve_worker(url: str, prefix: str, worker_id: str, concurrency: int) -> None:
    """Child-process entry point: one demo worker until SIGTERM."""
    settings = Settings.from_url(url, prefix=prefix, heartbeat_s=0.5)
    worker = Worker(build_demo_app(settings), worker_id=worker_id, concurrency=concurrency, grace=5.0)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    worker.start()
    print("ready", flush=True)
    worker.run()


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _result(plan: list[tuple[str, list[Any]]], submitted: dict[str, float], started: float,
            finals: _Finals, url: str) -> DemoResult:
    ours = {tid: finals.events[tid] for tid in submitted if tid in finals.events}
    latencies = [(arrived - submitted[tid]) * 1000 for tid, (arrived, _) in ours.items()]
    last = max((arrived for arrived, _ in ours.values()), default=started)
    per_worker = Counter(event.worker or "(coordinator)" for _, event in ours.values())
    succeeded = sum(1 for _, event in ours.values() if event.state == "succeeded")
    return DemoResult(
        tasks=len(plan), succeeded=succeeded, failed=len(ours) - succeeded, missing=len(submitted) - len(ours),
        elapsed_s=last - started, latency_p50_ms=percentile(latencies, 0.5),
        latency_p99_ms=percentile(latencies, 0.99), per_worker=dict(sorted(per_worker.items())),
        expected_failures=sum(1 for name, args in plan if name == "divide" and args[1] == 0), broker_url=url,
        redispatched=sum(1 for _, event in ours.values() if event.attempt > 1),
    )


# -- presentation (rich) ---------------------------------------------------------------------
@contextmanager
def progress_bar(console: Any, total: int) -> Iterator[ProgressCallback]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("tasks"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        bar = progress.add_task("tasks", total=total)
        yield lambda done, _total: progress.update(bar, completed=done)


def render_result(console: Any, result: DemoResult) -> None:
    from rich.table import Table

    table = Table(title="mqtt-tasks demo", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    failed = f"{result.failed}"
    if result.expected_failures:
        failed += f" ({result.expected_failures} on purpose: divide by zero)"
    rows = [("tasks", str(result.tasks)), ("succeeded", str(result.succeeded)), ("failed", failed)]
    if result.missing:
        rows.append(("no result", f"[red]{result.missing}[/]"))
    rows += [("throughput", f"{result.throughput:,.0f} tasks/s"),
             ("latency p50", f"{result.latency_p50_ms:.1f} ms"), ("latency p99", f"{result.latency_p99_ms:.1f} ms")]
    if result.killed:
        rows += [("worker killed mid-run", result.killed),
                 ("tasks dispatched again", str(result.redispatched)),
                 ("tasks lost", f"[red]{result.missing}[/]" if result.missing else "0")]
    rows.append(("tasks per worker", ""))
    rows += [(f"  {worker}", f"{count}") for worker, count in result.per_worker.items()]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


if __name__ == "__main__":  # the child process of a demo worker
    _serve_worker(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
