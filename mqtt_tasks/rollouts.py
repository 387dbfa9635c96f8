"""The rollout policy: waves, their rate, per-worker timeouts and the abort threshold (pure).

A rollout is the coordinator's durable record of one signed bundle going to a fixed list of
workers (those the selector matched among the live workers when it started: a snapshot, like an
AWS IoT snapshot job). ``step`` takes the record and ``now`` and returns the workers to send the
bundle to now; the coordinator part (``coordinator/deploys.py``) does the I/O. Rules:

- Waves go out one after another: the next wave starts once every worker of the previous one has
  answered (``applied`` or ``failed``) or timed out, and not before the rate allows: with
  ``rate`` R workers per minute, a wave of n workers is followed by the next no sooner than
  60·n/R seconds after it started. Without a rate, as soon as the wave is done.
- A worker that has not said ``applied`` or ``failed`` within ``timeout_s`` of its bundle being
  sent counts as failed (``timed out``).
- Abort (AWS IoT Jobs ``abortConfig``, action CANCEL, failure type FAILED or TIMED_OUT): once at
  least ``min_executed`` workers have finished (applied or failed), if failed ≥ ``abort_pct`` % of
  the finished ones, the rollout is ``aborted``: no further wave starts. Workers of a wave already
  sent keep their answers (they are recorded; nothing is undone: that is ``rollback``).
- ``paused``: no wave starts; answers are still recorded and timeouts still judged. ``resume``
  goes on where it stopped (the rate counts from the last wave's start).
- ``completed``: every worker was sent the bundle and answered; failures are counted, not hidden.
- A worker's first final answer wins; a report for a step it has passed changes nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

RUNNING, PAUSED, ABORTED, COMPLETED = "running", "paused", "aborted", "completed"
ROLLOUT_STATES = (RUNNING, PAUSED, ABORTED, COMPLETED)
PENDING, SENT, DOWNLOADED, VERIFIED, APPLIED, FAILED = "pending", "sent", "downloaded", "verified", "applied", "failed"
_ORDER = {PENDING: 0, SENT: 1, DOWNLOADED: 2, VERIFIED: 3, APPLIED: 4, FAILED: 4}
IN_FLIGHT = frozenset({SENT, DOWNLOADED, VERIFIED})
FINISHED = frozenset({APPLIED, FAILED})
DEFAULT_TIMEOUT_S = 300.0


@dataclass
class WorkerStep:
    """One worker's part in a rollout."""

    state: str = PENDING
    reason: str | None = None
    sent_at: float | None = None
    ended_at: float | None = None


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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rollout:
        fields = {f.name for f in dataclasses.fields(cls)}
        body = {k: v for k, v in data.items() if k in fields}
        body["workers"] = {w: WorkerStep(**step) for w, step in data.get("workers", {}).items()}
        return cls(**body)

    def count(self, *states: str) -> int:
        return sum(1 for step in self.workers.values() if step.state in states)

    def counts(self) -> dict[str, int]:
        return {"workers": len(self.workers), "pending": self.count(PENDING), "in_flight": self.count(*IN_FLIGHT),
                "applied": self.count(APPLIED), "failed": self.count(FAILED)}

    def applied(self) -> list[str]:
        return [w for w, step in self.workers.items() if step.state == APPLIED]


def on_report(rollout: Rollout, worker: str, state: str, reason: str | None, now: float) -> bool:
    """Record a worker's answer; True when it changed the record."""
    step = rollout.workers.get(worker)
    if step is None or step.state == PENDING or step.state in FINISHED or _ORDER.get(state, 0) <= _ORDER[step.state]:
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
        rollout.state, rollout.updated = COMPLETED, now
        return []
    if now < rollout.next_wave_at:
        return []
    wave = pending[:rollout.wave_size]
    for worker in wave:
        rollout.workers[worker] = WorkerStep(SENT, sent_at=now)
    rollout.waves += 1
    rollout.next_wave_at = now + (60.0 * len(wave) / rollout.rate if rollout.rate else 0.0)
    rollout.updated = now
    return wave


def next_due(rollout: Rollout) -> float | None:
    """When ``step`` may have something to do (a wave, a timeout); None: only an answer can change it."""
    if rollout.state in (ABORTED, COMPLETED):
        return None
    timeouts = [s.sent_at + rollout.timeout_s for s in rollout.workers.values()
                if s.state in IN_FLIGHT and s.sent_at is not None]
    if rollout.state == RUNNING and not timeouts:
        timeouts.append(rollout.next_wave_at)
    return min(timeouts) if timeouts else None


def _time_out(rollout: Rollout, now: float) -> None:
    for step_ in rollout.workers.values():
        if step_.state in IN_FLIGHT and step_.sent_at is not None and now - step_.sent_at >= rollout.timeout_s:
            step_.reason = f"timed out: no final answer within {rollout.timeout_s:g} s (last: {step_.state})"
            step_.state, step_.ended_at, rollout.updated = FAILED, now, now


def _abort_due(rollout: Rollout) -> bool:
    if rollout.abort_pct is None:
        return False
    finished = rollout.count(*FINISHED)
    return finished >= max(1, rollout.min_executed) and rollout.count(FAILED) * 100 >= rollout.abort_pct * finished
