"""Phase 1, fast: a burst of quick tasks, then a few sent one at a time.

Throughput is the burst's tasks over the time from its first publish to its last final status
event. Latency is measured per task from just before its publish to the arrival of its final
event on ``P/status/+``: in the burst that includes the wait behind the tasks ahead of it; one at
a time it is the round trip through broker, worker and back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .rig import Rig, outcomes, percentile, wait_until
from .tasks import fast_plan, on_purpose
from .watch import Watcher

BENCHMARK_NOTE = (
    "The embedded amqtt broker is the zero-install development broker, and the slow part here. "
    "docs/benchmarks.md measures Mosquitto on 2 vCPUs (full run of 2026-11-23): ~2,900 tasks/s with "
    "the coordinator (~3,400 without), p50 1.1 ms at 1,000 tasks/s; amqtt alone in its own process: "
    "~1,000 tasks/s."
)


@dataclass
class FastResult:
    submitted: int  # the burst
    succeeded: int
    failed: int
    on_purpose: int
    missing: int  # of the burst and the tasks sent one at a time
    elapsed_s: float
    burst_p50_ms: float
    burst_p99_ms: float
    single_p50_ms: float
    single_p99_ms: float
    singles: int
    per_worker: dict[str, int] = field(default_factory=dict)  # the burst and the ones sent one at a time

    @property
    def throughput(self) -> float:
        """Tasks with a final event per second, from the first publish to the last final event."""
        done = self.succeeded + self.failed
        return done / self.elapsed_s if self.elapsed_s > 0 else 0.0


def fast_phase(rig: Rig, count: int, *, fail_every: int = 50, singles: int = 50,
               timeout: float | None = None) -> FastResult:
    """The burst of ``count`` quick tasks, then ``singles`` one at a time; by default ``timeout``
    allows 50 tasks/s, a tenth of what the embedded broker moves on 2 cores."""
    timeout = 30 + (count + singles) / 50 if timeout is None else timeout
    plan = fast_plan(count, fail_every)
    expected = sum(1 for name, args in plan if on_purpose(name, args))
    rig.screen.phase("Phase 1: fast tasks", [
        f"{count:,} quick tasks at once (sums, SHA-256 chains, prime counts; no sleeps), then {singles} "
        "sent one at a time.",
        f"{expected} of them divide by zero on purpose: a failure is reported as failed, not lost.",
        "Latency: from just before a task's publish to its final status event on P/status/+.",
    ])
    with rig.screen.progress("fast tasks", len(plan)) as progress:
        sent = rig.submit(plan, "fast")
        wait_until(rig.watcher, set(sent), time.monotonic() + timeout, progress)
    burst = _latencies(rig.watcher, sent)
    single_sent = round_trips(rig, singles, time.monotonic() + timeout)
    single = _latencies(rig.watcher, single_sent)
    ids = set(sent)
    succeeded, failed, missing = outcomes(rig.watcher, ids)
    missing += len(single_sent) - rig.watcher.done(set(single_sent))
    arrivals = [rig.watcher.finals[i][0] for i in ids if i in rig.watcher.finals]
    elapsed = max(arrivals) - min(sent.values()) if arrivals else 0.0
    result = FastResult(
        submitted=len(plan), succeeded=succeeded, failed=failed, on_purpose=expected, missing=missing,
        elapsed_s=elapsed, burst_p50_ms=percentile(burst, 0.5), burst_p99_ms=percentile(burst, 0.99),
        single_p50_ms=percentile(single, 0.5), single_p99_ms=percentile(single, 0.99), singles=len(single_sent),
        per_worker={w: rig.watcher.ran(w, ids | single_sent.keys()) for w in rig.fleet.names})
    rig.screen.show(result)
    if rig.embedded:
        rig.screen.say(BENCHMARK_NOTE)
    return result


def _latencies(watcher: Watcher, sent: dict[str, float]) -> list[float]:
    return [(watcher.finals[i][0] - t) * 1000 for i, t in sent.items() if i in watcher.finals]


def round_trips(rig: Rig, count: int, deadline: float) -> dict[str, float]:
    """Send ``count`` tasks one at a time, each once the previous one's final event is in; stops
    at the first that gets none by the deadline. Returns what was sent (id -> time of sending)."""
    sent: dict[str, float] = {}
    for i in range(count):
        one = rig.submit([("add", [i, 1])], "single", start=i + 1)
        sent.update(one)
        wait_until(rig.watcher, set(one), deadline, lambda done: None)
        if not rig.watcher.done(set(one)):
            break
    return sent

