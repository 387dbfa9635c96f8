"""The rollout policy: targets, late joiners, waves, their rate, per-worker timeouts and the abort threshold (pure).

A rollout is the coordinator's durable record of one signed bundle going to workers. ``targets``
picks them at the start: the live workers the selector matches. ``step`` takes the record and
``now`` and returns the workers to send the bundle to now; ``join`` adds a worker heard later; the
coordinator part (``coordinator/deploys.py``) does the I/O. Rules:

- Continuous (the default, like AWS IoT Jobs ``targetSelection: CONTINUOUS``): a worker the
  selector matches that the coordinator hears live after the start (it was offline, it is new, it
  was restarted fresh) joins the rollout as ``pending`` and goes out in the next wave, as long as
  the rollout is its module's ``current`` one (the highest serial: not superseded) and neither
  aborted nor rolled back. A worker that already runs the version (its heartbeat's ``code``) joins
  as ``applied`` and is not sent it. A worker the rollout already has is never added again (its
  first final answer stands). A joiner reopens a ``completed`` or ``waiting`` rollout
  (``running`` until it answers). A ``worker=...`` selector names its targets: the named workers
  not live at the start are recorded as ``waiting`` and become ``pending`` when heard. With no
  target yet, the rollout is ``waiting``, not ``completed``.
- Snapshot (``snapshot``): the targets are fixed at the start, like an AWS IoT snapshot job; a
  start with no live match is refused. Records written before continuous rollouts existed have
  no ``snapshot`` field: they were snapshots, and stay so (``from_dict``).
- Waves go out one after another: the next wave starts once every worker of the previous one has
  answered (``applied`` or ``failed``) or timed out, and not before the rate allows: with
  ``rate`` R workers per minute, a wave of n workers is followed by the next no sooner than
  60·n/R seconds after it started. Without a rate, as soon as the wave is done.
- A worker that has not said ``applied`` or ``failed`` within ``timeout_s`` of its bundle being
  sent times out. One that never answered at all (still ``sent``: it was not there) is sent again
  when the coordinator next hears it live, up to ``retries`` more sends (AWS IoT Jobs
  ``jobExecutionsRetryConfig`` on TIMED_OUT): it waits as ``waiting`` (``attempts`` sends so far)
  and ``join`` makes it ``pending`` again, in a snapshot rollout too. Its final outcome is what
  counts (a late final answer to an earlier send included); a waiting retry is neither finished
  nor failed, so it does not count toward the abort threshold. One that answered and then went
  silent, or is out of retries, counts as failed (``timed out``).
- Abort (AWS IoT Jobs ``abortConfig``, action CANCEL, failure type FAILED or TIMED_OUT): once at
  least ``min_executed`` workers have finished (applied or failed), if failed ≥ ``abort_pct`` % of
  the finished ones, the rollout is ``aborted``: no further wave starts. Workers of a wave already
  sent keep their answers (they are recorded; nothing is undone: that is ``rollback``).
- ``paused``: no wave starts; answers are still recorded and timeouts still judged. ``resume``
  goes on where it stopped (the rate counts from the last wave's start).
- ``completed``: every worker was sent the bundle and answered; failures are counted, not hidden.
  (A continuous rollout's ``waiting`` workers do not hold it up: they are counted apart.)
- A worker's first final answer wins; a report for a step it has passed changes nothing.
- A rollback (``rollback_of``) goes to the selector of the rollout it undoes: the live workers
  that already run its version (heartbeat ``code``) are recorded ``applied`` and not sent it
  (``skip_running``), and joiners get it like any continuous rollout's.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .deploy.selector import Selector, parse

RUNNING, PAUSED, ABORTED, COMPLETED, WAITING = "running", "paused", "aborted", "completed", "waiting"
ROLLOUT_STATES = (WAITING, RUNNING, PAUSED, ABORTED, COMPLETED)
PENDING, SENT, DOWNLOADED, VERIFIED, APPLIED, FAILED = "pending", "sent", "downloaded", "verified", "applied", "failed"
_ORDER = {WAITING: 0, PENDING: 0, SENT: 1, DOWNLOADED: 2, VERIFIED: 3, APPLIED: 4, FAILED: 4}
UNSENT = frozenset({WAITING, PENDING})
IN_FLIGHT = frozenset({SENT, DOWNLOADED, VERIFIED})
FINISHED = frozenset({APPLIED, FAILED})
DEFAULT_TIMEOUT_S = 300.0
DEFAULT_RETRIES = 3


@dataclass
class WorkerStep:
    """One worker's part in a rollout."""

    state: str = PENDING
    reason: str | None = None
    sent_at: float | None = None
    ended_at: float | None = None
    attempts: int = 0                # how many times the bundle was sent to it


@dataclass
class Rollout:
    """The durable record of one rollout (``Store.put_rollout``)."""

    id: str
    module: str
    version: str
    serial: int
    to: str
    bundle: dict[str, Any]
    workers: dict[str, WorkerStep]  # in wave order
    wave_size: int = 1
    rate: float | None = None        # workers per minute
    abort_pct: float | None = None
    min_executed: int = 1
    timeout_s: float = DEFAULT_TIMEOUT_S
    state: str = RUNNING
    reason: str | None = None
    created: float = 0.0
    updated: float = 0.0
    waves: int = 0
    next_wave_at: float = 0.0
    previous: str | None = None      # the earlier rollout of this module a rollback goes back to
    rollback_of: str | None = None
    rolled_back_by: str | None = None
    snapshot: bool = False           # targets fixed at the start; else workers heard later join
    retries: int = DEFAULT_RETRIES   # sends again to a worker that timed out without any answer

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rollout:
        fields = {f.name for f in dataclasses.fields(cls)}
        body = {k: v for k, v in data.items() if k in fields}
        body.setdefault("snapshot", True)  # a record from before continuous rollouts: it was a snapshot
        body.setdefault("retries", 0)  # a record from before retries: a timeout was final
        body["workers"] = {w: WorkerStep(**step) for w, step in data.get("workers", {}).items()}
        return cls(**body)

    def count(self, *states: str) -> int:
        return sum(1 for step in self.workers.values() if step.state in states)

    def counts(self) -> dict[str, int]:
        return {"workers": len(self.workers), "waiting": self.count(WAITING), "pending": self.count(PENDING),
                "in_flight": self.count(*IN_FLIGHT), "applied": self.count(APPLIED), "failed": self.count(FAILED)}

    def applied(self) -> list[str]:
        return [w for w, step in self.workers.items() if step.state == APPLIED]


def targets(to: str, live: Iterable[tuple[str, Iterable[str]]], snapshot: bool) -> dict[str, WorkerStep]:
    """The steps of a new rollout to selector ``to``: the ``live`` (worker, labels) it matches, sorted,
    ``pending``; for a continuous ``worker=...`` selector, the named workers not live, ``waiting``.
    ``ValueError`` for a snapshot that matches no live worker (a continuous rollout waits)."""
    selector = _selector(to)
    matched = sorted(worker for worker, labels in live if selector.matches(worker, labels))
    if snapshot and not matched:
        raise ValueError(f"no live worker matches {to} (a --snapshot rollout needs one; without it, the rollout "
                         "waits for the workers that match)")
    steps = {worker: WorkerStep() for worker in matched}
    if not snapshot and selector.kind == "worker":
        steps.update((worker, WorkerStep(WAITING)) for worker in sorted(selector.values - steps.keys()))
    return steps


def current(rollouts: Iterable[Rollout]) -> dict[str, Rollout]:
    """Module -> its current rollout: the one of the highest serial (a newer one supersedes it)."""
    newest: dict[str, Rollout] = {}
    for rollout in rollouts:
        if rollout.module not in newest or rollout.serial > newest[rollout.module].serial:
            newest[rollout.module] = rollout
    return newest


def join(rollout: Rollout, worker: str, labels: Iterable[str], running: Mapping[str, str], now: float) -> bool:
    """``worker`` (with ``labels``, running ``running``: module -> version) was heard live; True when it
    joined the rollout, or a target that timed out without an answer is due again (call it for the
    module's ``current`` rollout only)."""
    if rollout.state == ABORTED or rollout.rolled_back_by is not None:
        return False
    known = rollout.workers.get(worker)
    if known is not None:
        if known.state != WAITING:
            return False  # it was a target already: its first final answer stands
    elif rollout.snapshot or not _selector(rollout.to).matches(worker, labels):
        return False
    attempts = known.attempts if known is not None else 0
    if running.get(rollout.module) == rollout.version:
        rollout.workers[worker] = _already(rollout.version, now, attempts)
    else:
        rollout.workers[worker] = WorkerStep(PENDING, attempts=attempts)
    if rollout.state in (COMPLETED, WAITING):
        rollout.state, rollout.reason = RUNNING, None  # ``step`` decides again: a wave, or done
    rollout.updated = now
    return True


def skip_running(rollout: Rollout, running: Mapping[str, Mapping[str, str]], now: float) -> list[str]:
    """The ``pending`` workers whose code (``running``: worker -> module -> version) is the rollout's
    version already: recorded ``applied``, not sent (a rollback's start); their ids."""
    skipped = [w for w, s in rollout.workers.items()
               if s.state == PENDING and running.get(w, {}).get(rollout.module) == rollout.version]
    for worker in skipped:
        rollout.workers[worker] = _already(rollout.version, now, 0)
    return skipped


def _already(version: str, now: float, attempts: int) -> WorkerStep:
    return WorkerStep(APPLIED, reason=f"already running {version} when heard: not sent", ended_at=now,
                      attempts=attempts)


def move(rollout: Rollout, after: str, now: float) -> str | None:
    """``pause`` or ``resume`` (``after``: ``paused``, ``running``); the reason it cannot, or None.
    A continuous rollout that is ``waiting`` or ``completed`` can be paused too: joiners then wait
    as ``pending`` until it is resumed."""
    if after == PAUSED:
        allowed = {RUNNING, PAUSED} | (set() if rollout.snapshot else {WAITING, COMPLETED})
    else:
        allowed = {PAUSED, RUNNING}
    if rollout.state not in allowed:
        return f"rollout {rollout.id} is {rollout.state}: it cannot be {after}"
    if rollout.state != after:
        rollout.state, rollout.updated = after, now  # resumed: ``step`` decides whether it is done
    return None


def on_report(rollout: Rollout, worker: str, state: str, reason: str | None, now: float) -> bool:
    """Record a worker's answer; True when it changed the record. A worker waiting for a retry (it
    timed out without an answer) takes only a final answer: that send reached it after all."""
    step = rollout.workers.get(worker)
    if step is None or step.state in FINISHED:
        return False
    if step.state in UNSENT:
        if not (step.attempts and state in FINISHED):
            return False
    elif _ORDER.get(state, 0) <= _ORDER[step.state]:
        return False
    step.state, step.reason = state, reason if state == FAILED else None
    if state in FINISHED:
        step.ended_at = now
    rollout.updated = now
    return True


def step(rollout: Rollout, now: float) -> list[str]:
    """Judge timeouts and the abort threshold; the workers whose wave starts now (marked ``sent``)."""
    _time_out(rollout, now)
    if rollout.state in (RUNNING, PAUSED) and _abort_due(rollout):
        failed, finished = rollout.count(FAILED), rollout.count(*FINISHED)
        rollout.state, rollout.updated = ABORTED, now
        rollout.reason = (f"{failed} of {finished} finished worker(s) failed, at or above the {rollout.abort_pct:g}% "
                          f"threshold (after at least {rollout.min_executed})")
    if rollout.state != RUNNING or rollout.count(*IN_FLIGHT):
        return []
    pending = [w for w, s in rollout.workers.items() if s.state == PENDING]
    if not pending:
        reached = sum(1 for s in rollout.workers.values() if s.state != WAITING or s.attempts)
        rollout.state, rollout.updated = COMPLETED if reached or rollout.snapshot else WAITING, now
        return []
    if now < rollout.next_wave_at:
        return []
    wave = pending[:rollout.wave_size]
    for worker in wave:
        rollout.workers[worker] = WorkerStep(SENT, sent_at=now, attempts=rollout.workers[worker].attempts + 1)
    rollout.waves += 1
    rollout.next_wave_at = now + (60.0 * len(wave) / rollout.rate if rollout.rate else 0.0)
    rollout.updated = now
    return wave


def next_due(rollout: Rollout) -> float | None:
    """When ``step`` may have something to do (a wave, a timeout); None: only an answer can change it."""
    if rollout.state in (ABORTED, COMPLETED, WAITING):
        return None  # only an answer or a joiner can change it
    timeouts = [s.sent_at + rollout.timeout_s for s in rollout.workers.values()
                if s.state in IN_FLIGHT and s.sent_at is not None]
    if rollout.state == RUNNING and not timeouts:
        timeouts.append(rollout.next_wave_at)
    return min(timeouts) if timeouts else None


def _time_out(rollout: Rollout, now: float) -> None:
    for step_ in rollout.workers.values():
        if step_.state in IN_FLIGHT and step_.sent_at is not None and now - step_.sent_at >= rollout.timeout_s:
            sends, rollout.updated = max(step_.attempts, 1), now
            if step_.state == SENT and sends <= rollout.retries:  # not a word from it: it was not there
                step_.reason = (f"timed out: no answer within {rollout.timeout_s:g} s (send {sends} of at most "
                                f"{rollout.retries + 1}): sent again when heard")
                step_.state = WAITING
            else:
                step_.reason = f"timed out: no final answer within {rollout.timeout_s:g} s (last: {step_.state})" + \
                    (f", after {sends} sends" if sends > 1 else "")
                step_.state, step_.ended_at = FAILED, now


def _abort_due(rollout: Rollout) -> bool:
    if rollout.abort_pct is None:
        return False
    finished = rollout.count(*FINISHED)
    return finished >= max(1, rollout.min_executed) and rollout.count(FAILED) * 100 >= rollout.abort_pct * finished


@functools.lru_cache(maxsize=256)
def _selector(text: str) -> Selector:
    return parse(text)  # checked when the bundle was signed and read: a join costs a lookup, not a parse
