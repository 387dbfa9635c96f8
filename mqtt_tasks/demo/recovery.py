"""Phase 2, recovery: slow calls spread over the workers, and one worker killed with SIGKILL.

Once every call has started somewhere, the worker running the most of them is killed. Its
tasks are then in nobody's hands; what follows is told as the watcher sees it on the wire:

1. the broker notices the closed connection and publishes the worker's Last Will (``offline``
   on ``P/workers/{worker}``), which the coordinator subscribes to; had the Will been lost, the
   worker's leases would run out after a few missed heartbeats instead;
2. the coordinator dispatches each task it had recorded as running there again, with
   ``attempt`` 2, to the inbox of a worker with a free slot (``P/inbox/{worker}``);
3. those workers run them; their final events carry ``attempt`` 2.

Without a coordinator nothing records the tasks, so nothing could recover them: no worker is
killed then (and none with a single worker: there would be nobody to take over).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from .rig import Rig, outcomes, wait_until
from .tasks import SLOW_CALL_MS, slow_plan

KILL_AFTER_S = 3.0  # kill by then even if some calls have not started (a slow machine)


@dataclass
class RecoveryResult:
    submitted: int
    succeeded: int = 0
    failed: int = 0
    missing: int = 0
    duplicates: int = 0
    redispatched: int = 0  # tasks the coordinator sent again (P/inbox/+, attempt >= 2)
    rerun: int = 0  # tasks whose final event came from attempt 2 or later
    killed: str | None = None
    killed_pid: int | None = None
    killed_wall: float | None = None  # time.time() of the kill, to compare with the coordinator's record
    held: list[str] = field(default_factory=list)  # what the killed worker was running and never finished
    will_s: float | None = None  # kill -> its Last Will seen
    first_redispatch_s: float | None = None  # kill -> the first of its tasks dispatched again
    redispatch_s: float | None = None  # kill -> the last of its tasks dispatched again
    recovered_s: float | None = None  # kill -> the last of its tasks finished elsewhere
    detection: str = ""
    elapsed_s: float = 0.0
    per_worker: dict[str, int] = field(default_factory=dict)
    why_no_kill: str = ""


def recovery_phase(rig: Rig, count: int, *, kill: bool = True, timeout: float | None = None) -> RecoveryResult:
    """``count`` slow calls; with ``kill`` (and a coordinator, and two workers or more) one worker dies.

    By default ``timeout`` allows every call to run twice as long as it may, plus 30 s."""
    slots = max(1, len(rig.fleet.names) * rig.fleet.concurrency)
    timeout = 30 + 2 * (count / slots + 1) * SLOW_CALL_MS[1] / 1000 if timeout is None else timeout
    result = RecoveryResult(submitted=count)
    result.why_no_kill = _why_no_kill(rig, kill)
    _introduce(rig, count, result.why_no_kill)
    plan = slow_plan(count)
    started = time.monotonic()
    with rig.screen.progress("slow calls", len(plan)) as progress:
        sent = rig.submit(plan, "slow")
        ids = set(sent)
        story = _Story(rig, ids, result) if not result.why_no_kill else None
        wait_until(rig.watcher, ids, started + timeout, progress, story.step if story else lambda: None)
    watcher = rig.watcher
    result.succeeded, result.failed, result.missing = outcomes(watcher, ids)
    result.duplicates = watcher.duplicates(ids)
    result.redispatched = len(ids & watcher.redispatched.keys())
    result.rerun = sum(1 for i in ids if i in watcher.finals and watcher.finals[i][1].attempt > 1)
    arrivals = [watcher.finals[i][0] for i in ids if i in watcher.finals]
    result.elapsed_s = max(arrivals) - started if arrivals else 0.0
    result.per_worker = {w: watcher.ran(w, ids) for w in rig.fleet.names}
    if result.killed:  # what it held and never finished (a result already on its way is not lost)
        result.held = [i for i in result.held if not watcher.ran_it(result.killed, i)]
    rig.screen.show(result)
    return result


def _why_no_kill(rig: Rig, kill: bool) -> str:
    if not kill:
        return "--no-kill-worker"
    if not rig.coordinated:
        return "no coordinator to recover its tasks"
    if len(rig.fleet.names) < 2:
        return "a single worker: nobody would be left to take its tasks over"
    return ""


def _introduce(rig: Rig, count: int, why_no_kill: str) -> None:
    low, high = (ms / 1000 for ms in SLOW_CALL_MS)
    workers = len(rig.fleet.names)
    lines = [f"{count} slow calls of {low:g}-{high:g} s each (they wait on a pretend remote service), "
             f"spread over {workers} worker process{'es' if workers > 1 else ''}."]
    if why_no_kill:
        title = "Phase 2: slow tasks, no worker killed"
        lines.append(f"No worker is killed ({why_no_kill}).")
        lines.append("While a task runs, its worker's heartbeats renew its lease with the coordinator: "
                     "however long it takes, it is not dispatched twice." if rig.coordinated else
                     "Producers and workers work without a coordinator, best effort: a crash could lose a task.")
    else:
        title = "Phase 2: a worker dies mid-run"
        lines += ["Once all have started, the worker running the most is killed with SIGKILL (no goodbye).",
                  "The coordinator, which records every task and runs none, must notice and dispatch "
                  "its tasks again."]
    rig.screen.phase(title, lines)


class _Story:
    """Kills the worker when the time comes, then tells what follows as the watcher sees it."""

    def __init__(self, rig: Rig, ids: set[str], result: RecoveryResult) -> None:
        self.rig, self.ids, self.result = rig, ids, result
        self.kill_by = time.monotonic() + KILL_AFTER_S
        self.killed_at = 0.0

    def step(self) -> None:
        if self.result.killed is None:
            self._maybe_kill()
        else:
            self._follow()

    def _maybe_kill(self) -> None:
        watcher = self.rig.watcher
        running = {w: held for w, held in watcher.running.items() if held and w in self.rig.fleet.names}
        begun = set(watcher.results).union(*running.values()) if running else set(watcher.results)
        if not running or (not self.ids <= begun and time.monotonic() < self.kill_by):
            return
        victim = max(sorted(running), key=lambda w: len(running[w]))
        result = self.result
        result.killed, result.held = victim, sorted(running[victim])
        result.killed_pid = self.rig.fleet.pid(victim)
        result.killed_wall = time.time()
        self.killed_at = self.rig.fleet.kill(victim)
        self.rig.screen.say(f"killed {victim} (pid {result.killed_pid}) with SIGKILL while it ran "
                            f"{len(result.held)} of the {len(self.ids)} calls")

    def _follow(self) -> None:
        watcher, result, victim = self.rig.watcher, self.result, self.result.killed
        assert victim is not None
        if result.will_s is None and victim in watcher.offline:
            result.will_s = watcher.offline[victim] - self.killed_at
            self.rig.screen.say(f"+{result.will_s:.2f} s  the broker published its Last Will "
                                f"(P/workers/{victim}: offline); the coordinator subscribes to it")
        pending = [i for i in result.held if not watcher.ran_it(victim, i)]
        if pending and result.redispatch_s is None:
            self._follow_dispatches(pending)
        finished = [watcher.finals[i][0] for i in pending if i in watcher.finals]
        if result.recovered_s is None and result.redispatch_s is not None and len(finished) == len(pending):
            result.recovered_s = max(finished) - self.killed_at
            self.rig.screen.say(f"+{result.recovered_s:.2f} s  all {len(pending)} finished on the other "
                                "workers: none lost")

    def _follow_dispatches(self, pending: list[str]) -> None:
        watcher, result = self.rig.watcher, self.result
        again = [watcher.redispatched[i] for i in pending if i in watcher.redispatched]
        if again and result.first_redispatch_s is None:
            first = min(r.arrived for r in again)
            result.first_redispatch_s = first - self.killed_at
            by_will = result.killed in watcher.offline and watcher.offline[result.killed or ""] <= first
            result.detection = "its Last Will" if by_will else "missed heartbeats (its leases ran out)"
            self.rig.screen.say(f"+{result.first_redispatch_s:.2f} s  the coordinator, alerted by "
                                f"{result.detection}, starts dispatching them again with attempt "
                                f"{again[0].attempt}, to workers whose heartbeats report free slots")
        if len(again) == len(pending):
            result.redispatch_s = max(r.arrived for r in again) - self.killed_at
            spread = ", ".join(f"{n} to {w}" for w, n in sorted(Counter(r.worker for r in again).items()))
            self.rig.screen.say(f"+{result.redispatch_s:.2f} s  all {len(again)} dispatched again: {spread}")
