"""The lease, retry and dispatch policy, as pure functions of (record, event, now).

No sockets, threads or clocks: every function takes ``now`` (epoch seconds, because records
outlive the process) and, where randomness is needed, an ``rng``. Each event function updates
the record it is given and returns the *effects* the coordinator must carry out:

- ``Cancel``: tell a worker to stop a stale attempt, or the attempt of a cancelled task
  (``P/control/{worker}``).
- ``Announce``: publish a coordinator status event (``retrying``, ``dead``, ``expired``); final
  ones also go to the task's reply topic, ``dead`` ones also to ``P/dead/{queue}``.
- ``Enqueue``: the record entered the backlog; hand it to a worker with a free slot.

A task whose ``not_before`` is ahead is *scheduled*: the coordinator holds it (no worker does)
until then, by its own clock (the fleet's), then it joins the backlog (docs/scheduling.md).
A task with a ``rate_limit`` joins the backlog as soon as it is seen (workers hand it over): the
backlog dispatches it when its bucket's window allows (``ratelimits.py``, coordinator/ratelimits.py).

Attempts are fencing tokens: every re-dispatch after a possible loss gets ``attempt + 1``, and
only events of the current attempt move a live task. ``failures`` counts attempts that failed;
the task is dead when ``failures`` reaches ``max_attempts``.

Poison isolation (issue 13): a worker process that dies takes every task it holds with it, and
nothing says which one killed it (a task that kills at once never even announces ``started``).
So a task lost with its worker is not charged an attempt: it becomes a *suspect* (``losses`` > 0).
Its first re-run shares a worker with others, so a dead worker's tasks run again at the fleet's
speed (group testing: ``runs_alone``); lost again, it is from then on dispatched *alone*
(``"alone": true`` in the body: the worker runs nothing else meanwhile, and announces
``started``, acknowledged by the broker, before the body runs). A suspect lost with its worker
while it ran alone killed that worker: that conviction counts as a failed attempt (``kills``), so
a poison task ends ``dead`` ("killed its worker N times") after ``max_attempts`` convictions,
while its neighbours run once more with others and at most once alone. A suspect lost
before it started (its worker died of something else while it waited its turn) is not charged;
``max_losses`` bounds those, so no task circulates for ever.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .protocol.states import DEFAULT_MAX_ATTEMPTS, OFFLINE, ONLINE
from .protocol.validate import lenient
from .store.base import (
    BACKLOG,
    CANCELLED,
    DEAD,
    DISPATCHED,
    EXPIRED,
    QUEUED,
    RETRYING,
    SCHEDULED,
    STARTED,
    SUCCEEDED,
    TaskRecord,
)


@dataclass(frozen=True)
class LeasePolicy:
    """The knobs. Defaults suit production; tests shrink heartbeats, not the rules."""

    lease_heartbeats: float = 4.0       # a lease lasts this many of the worker's heartbeat intervals ...
    lease_slack: float = 1.0            # ... plus this many seconds
    default_heartbeat_s: float = 2.0    # when an event does not say
    dispatch_timeout: float = 10.0      # seen or dispatched, but nobody accounted for it: presumed lost
    timeout_grace: float = 5.0          # a started task past timeout + grace is presumed stuck
    reconnect_grace: float = 5.0        # after the coordinator (re)connects, leases get this much extra
    backoff_base: float = 0.5
    backoff_cap: float = 60.0
    default_max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_losses: int = 10                # lost with its worker this often, never convicted: dead all the same
    alone_from_loss: int = 2            # a suspect runs alone from its Nth loss; before, with others (1: always)


@dataclass(frozen=True)
class Cancel:
    worker: str
    task_id: str
    attempt: int
    reason: str
    task_cancelled: bool = False  # the task itself was cancelled, not only this attempt superseded


@dataclass(frozen=True)
class Announce:
    state: str
    reason: str
    final: bool = False
    reply: bool = False
    dead_letter: bool = False
    next_at: float | None = None


@dataclass(frozen=True)
class Enqueue:
    task_id: str


Effect = Cancel | Announce | Enqueue
Rng = Callable[[], float]

HELD = {BACKLOG: "expired before it was started", RETRYING: "expired before it could be tried again",
        SCHEDULED: "expired before its not_before time"}
"""The states in which the coordinator itself holds the task, and so judges its expiry at once
(with the reason it gives). A ``queued`` or ``dispatched`` task may be in a worker's hands: the
worker judges whether it started in time (see ``_expire_unaccounted``)."""


# -- small rules ---------------------------------------------------------------------------
def lease_s(policy: LeasePolicy, heartbeat_s: float | None) -> float:
    hb = heartbeat_s if heartbeat_s and heartbeat_s > 0 else policy.default_heartbeat_s
    return policy.lease_heartbeats * hb + policy.lease_slack


def backoff(policy: LeasePolicy, failures: int, rng: Rng) -> float:
    """Exponential backoff with equal jitter: half fixed, half random, capped."""
    ceiling = min(policy.backoff_cap, policy.backoff_base * (2.0 ** max(failures - 1, 0)))
    return ceiling / 2 + rng() * ceiling / 2


def max_attempts(policy: LeasePolicy, record: TaskRecord) -> int:
    return record.max_attempts or policy.default_max_attempts


def is_delayed(record: TaskRecord, now: float) -> bool:
    """The task may not start yet: its ``not_before`` is ahead of ``now`` (the coordinator's clock)."""
    return record.not_before is not None and record.not_before > now


def _is_winner(record: TaskRecord, attempt: int, worker: str | None) -> bool:
    w = record.winner or {}
    return w.get("attempt") == attempt and w.get("worker") == worker


# -- task and status events -------------------------------------------------------------------
def new_record(task_id: str, now: float, body: Mapping[str, Any] | None = None, **known: Any) -> TaskRecord:
    record = TaskRecord(id=task_id, created=now, updated=now)
    if body is not None:
        adopt_body(record, body)
    for key, value in known.items():
        if value is not None and getattr(record, key, None) in (None, "default"):
            setattr(record, key, value)
    return record


def adopt_body(record: TaskRecord, body: Mapping[str, Any]) -> None:
    record.body = dict(body)
    record.task = body.get("task") or record.task
    record.queue = body.get("queue") or record.queue
    record.max_attempts = body.get("max_attempts") or record.max_attempts
    record.timeout = body.get("timeout") or record.timeout
    record.expires_at = body.get("expires_at") or record.expires_at
    record.reply_to = body.get("reply_to") or record.reply_to
    record.correlation = body.get("correlation") or record.correlation
    record.not_before = body.get("not_before") or record.not_before
    record.priority = lenient("priority", body.get("priority", record.priority))
    record.step_timeout = body.get("step_timeout") or record.step_timeout
    record.rate_limit = body.get("rate_limit") or record.rate_limit
    record.rate_key = body.get("rate_key") or record.rate_key


def on_task(record: TaskRecord, body: Mapping[str, Any], now: float, policy: LeasePolicy) -> list[Effect]:
    """A task message on ``P/tasks/{queue}``: a new task, or an echo / redelivery of a known one."""
    attempt = int(body.get("attempt") or 1)
    if record.body is None:
        adopt_body(record, body)
    if record.terminal or attempt < record.attempt:
        return []
    if attempt == record.attempt and record.state != QUEUED:
        return []  # a redelivery or an echo: the record already knows more
    record.attempt = attempt
    if is_delayed(record, now):
        return _schedule(record, now)
    if record.rate_limit is not None:  # only the coordinator's backlog dispatches it, within its limit
        return _to_backlog(record, now, event="rate-limited")
    record.state = QUEUED
    record.deadline = now + policy.dispatch_timeout
    record.updated = now
    return []


def on_resent(record: TaskRecord, body: Mapping[str, Any], seen: bool, now: float) -> list[Effect]:
    """A task a producer re-sent to the coordinator alone (``P/record/{queue}``): it had no receipt.

    ``seen``: the coordinator already had a record of the id (the first copy, a status event or an
    earlier re-send got here first); nothing changes then, the producer only needs its receipt. A
    task never seen is presumed lost by the broker: no worker took it from the shared topic as far
    as anyone knows, so it joins the backlog as the next attempt, and should the first copy still
    reach a worker, that attempt is stale (fencing) and is cancelled when it starts."""
    if record.body is None:
        adopt_body(record, body)
    if seen or record.terminal:
        return []
    record.attempt = int(body.get("attempt") or 1) + 1
    return _to_backlog(record, now, event="resent")


def on_started(record: TaskRecord, attempt: int, worker: str, heartbeat_s: float | None, now: float,
               policy: LeasePolicy) -> list[Effect]:
    """A worker started an attempt, or lists it in a heartbeat: the lease starts or is renewed."""
    if record.terminal:
        if _is_winner(record, attempt, worker):
            return []
        return [Cancel(worker, record.id, attempt, record.reason if record.state == CANCELLED and record.reason
                       else f"task already {record.state}", task_cancelled=record.state == CANCELLED)]
    if attempt < record.attempt:
        return [Cancel(worker, record.id, attempt, f"superseded by attempt {record.attempt}")]
    fresh = record.state != STARTED or record.worker != worker or attempt != record.attempt
    record.attempt = attempt
    record.state = STARTED
    record.worker = worker
    record.deadline = now + lease_s(policy, heartbeat_s)
    if fresh:
        record.started_at = now
        record.run_deadline = now + record.timeout + policy.timeout_grace if record.timeout else None
        record.step_deadline = now + record.step_timeout if record.step_timeout else None
        record.note(attempt=attempt, worker=worker, event="started", ts=now)
        record.updated = now
    return []


def on_progress(record: TaskRecord, attempt: int, worker: str, heartbeat_s: float | None, progress: Any,
                now: float, policy: LeasePolicy) -> list[Effect]:
    """A running attempt reported progress: as a heartbeat would, it renews the lease (and says the
    attempt started); and it restarts the step timer (``step_timeout``)."""
    effects = on_started(record, attempt, worker, heartbeat_s, now, policy)
    if record.terminal or attempt != record.attempt:
        return effects
    record.progress = {**(progress if isinstance(progress, dict) else {"value": progress}), "attempt": attempt,
                       "ts": now}
    record.step_deadline = now + record.step_timeout if record.step_timeout else None
    record.updated = now
    return effects


def on_cancel(record: TaskRecord, reason: str, now: float, attempt: int | None = None) -> list[Effect]:
    """A cancel request (or a worker's ``cancelled`` event about ``attempt``): a live task ends
    ``cancelled`` at once, and the worker running or sent it is told to stop it."""
    if record.terminal or (attempt is not None and attempt < record.attempt):
        return []
    effects: list[Effect] = []
    if record.state in (STARTED, DISPATCHED) and record.worker:
        effects.append(Cancel(record.worker, record.id, record.attempt, reason, task_cancelled=True))
    return effects + _finish(record, CANCELLED, reason, now)


def on_succeeded(record: TaskRecord, attempt: int, worker: str | None, result: Any, now: float) -> list[Effect]:
    """The first terminal result wins, from any attempt; later ones are duplicates."""
    if record.terminal:
        if not _is_winner(record, attempt, worker):
            record.duplicates += 1
            record.note(attempt=attempt, worker=worker, event="duplicate", ts=now)
            record.updated = now
        return []
    effects: list[Effect] = []
    if record.state == STARTED and record.worker and (record.worker, record.attempt) != (worker, attempt):
        effects.append(Cancel(record.worker, record.id, record.attempt, f"attempt {attempt} succeeded"))
    record.state = SUCCEEDED
    record.result = result
    record.winner = {"attempt": attempt, "worker": worker}
    record.worker = worker
    record.deadline = record.run_deadline = None
    record.note(attempt=attempt, worker=worker, event="succeeded", ts=now)
    record.updated = now
    return effects


def on_failed(record: TaskRecord, attempt: int, worker: str | None, error: dict[str, Any] | None,
              final: bool, attempts_allowed: int | None, now: float, policy: LeasePolicy,
              rng: Rng) -> list[Effect]:
    """A failed attempt: retry after a backoff, or bury the task."""
    if attempts_allowed:
        record.max_attempts = record.max_attempts or attempts_allowed
    if record.terminal or attempt < record.attempt:
        if not record.terminal or not _is_winner(record, attempt, worker):
            record.note(attempt=attempt, worker=worker, event="failed-stale", ts=now)
            record.updated = now
        return []
    if any(h.get("event") == "failed" and h.get("attempt") == attempt for h in record.history):
        return []  # a redelivered event
    record.attempt = attempt
    record.failures += 1
    record.error = error
    record.worker = worker
    record.note(attempt=attempt, worker=worker, event="failed", ts=now,
                error=f"{(error or {}).get('type')}: {(error or {}).get('message')}")
    record.updated = now
    message = (error or {}).get("message") or "failed"
    if final:  # the worker saw no coordinator and already replied: the task ends here
        return _finish(record, DEAD, f"failed with no coordinator to retry it: {message}", now, reply=False)
    if record.failures >= max_attempts(policy, record):
        return _finish(record, DEAD, f"attempts exhausted ({record.failures}): {message}", now)
    delay = backoff(policy, record.failures, rng)
    record.state = RETRYING
    record.deadline = now + delay
    record.run_deadline = None
    return [Announce(RETRYING, f"attempt {attempt} failed: {message}", next_at=record.deadline)]


def on_deferred(record: TaskRecord, attempt: int, worker: str | None, body: Mapping[str, Any] | None,
                now: float) -> list[Effect]:
    """A worker had no free slot and handed the task over: it joins the backlog."""
    if body is not None and record.body is None:
        adopt_body(record, body)
    if record.terminal or attempt < record.attempt:
        return []
    if record.state == STARTED and attempt == record.attempt:
        return []  # it runs elsewhere already
    if record.state in (BACKLOG, SCHEDULED) and attempt == record.attempt:
        return []
    record.attempt = attempt
    if is_delayed(record, now):  # a worker handed over a task that may not start yet
        return _schedule(record, now, worker=worker)
    return _to_backlog(record, now, event="deferred", worker=worker)


def on_delayed_handover(record: TaskRecord, attempt: int, worker: str | None, body: Mapping[str, Any] | None,
                        now: float, rate: tuple[str, str | None] | None = None) -> list[Effect]:
    """A worker handed over a task from the shared topic because its ``not_before`` was ahead by its
    reading of the fleet's clock. The coordinator saw that task too, and whatever it made of it
    stands (scheduled, or already due, dispatched, run): only a task it has not taken charge of
    (``queued``: not seen, or seen as due by its own clock) changes, held or put in the backlog.
    A late hand-over must never send a task it already dispatched out a second time.

    ``rate``: (``rate_limit``, ``rate_key``) of the worker's registration of a task that carried no
    limit: the record takes them (not its body: a signed task is dispatched as it was signed), so
    the backlog dispatches the task within that limit."""
    if body is not None and record.body is None:
        adopt_body(record, body)
    if record.terminal or record.state != QUEUED or attempt < record.attempt:
        return []
    if rate is not None and record.rate_limit is None:
        record.rate_limit, record.rate_key = rate
    record.attempt = attempt
    if is_delayed(record, now):
        return _schedule(record, now, worker=worker)
    return _to_backlog(record, now, event="deferred", worker=worker)


def on_handed_back(record: TaskRecord, attempt: int, worker: str | None, body: Mapping[str, Any] | None,
                   reason: str | None, now: float) -> list[Effect]:
    """A stopping worker gave up on an attempt it had started (its grace ran out) and will never
    report it: dispatch the task again as attempt + 1 (fencing, should a result of the old one
    arrive all the same), without counting a failure: stopping a worker is not the task's fault."""
    if body is not None and record.body is None:
        adopt_body(record, body)
    if record.terminal or attempt < record.attempt:
        return []
    if attempt == record.attempt and record.worker not in (None, worker):
        return []  # the record has it running on another worker: not this worker's to hand back
    why = reason or f"worker {worker} stopped while running it"
    record.note(attempt=attempt, worker=worker, event="handed-back", reason=why, ts=now)
    record.attempt = attempt + 1
    record.reason = why
    return _to_backlog(record, now, event="requeued")


def on_worker_event_final(record: TaskRecord, state: str, attempt: int, worker: str | None,
                          reason: str | None, now: float) -> list[Effect]:
    """A worker ended the task itself (``expired`` before it started)."""
    if record.terminal or attempt < record.attempt:
        return []
    record.state = state
    record.reason = reason
    record.winner = {"attempt": attempt, "worker": worker}
    record.deadline = record.run_deadline = None
    record.note(attempt=attempt, worker=worker, event=state, ts=now)
    record.updated = now
    return []


def on_dispatched(record: TaskRecord, worker: str, now: float, policy: LeasePolicy) -> None:
    """The coordinator sent the backlog record to ``worker``'s inbox."""
    record.state = DISPATCHED
    record.worker = worker
    record.deadline = now + policy.dispatch_timeout
    record.updated = now


def on_worker_lost(record: TaskRecord, worker: str, now: float, policy: LeasePolicy) -> list[Effect]:
    """The worker holding the record went offline (Last Will or clean stop)."""
    if record.terminal or record.worker != worker or record.state not in (STARTED, DISPATCHED):
        return []
    doing = "while running it" if record.state == STARTED else "with the task dispatched to it"
    return _lost_with_worker(record, now, f"worker {worker} went offline {doing}", policy)


def is_suspect(record: TaskRecord) -> bool:
    """Lost with a worker before (``runs_alone`` says whether it is dispatched alone)."""
    return record.losses > 0


def runs_alone(record: TaskRecord, policy: LeasePolicy) -> bool:
    """A suspect lost ``alone_from_loss`` times is dispatched alone: only a crash then convicts it.

    Group testing: a first loss re-runs with the others (a worker's slots all busy), so the tasks
    of a dead worker run again at the speed of the fleet, not one at a time; in the common case
    (the worker died of something else: OOM, a node lost, ``kill -9``) that is all. A poison task
    among them kills its worker once more, and everything lost with it then runs alone: convicted
    as before, one crash later; an innocent neighbour runs alone once."""
    return record.losses >= max(policy.alone_from_loss, 1)


def on_timer(record: TaskRecord, now: float, policy: LeasePolicy, *, worker_died: bool = False) -> list[Effect]:
    """Whatever is due for a live record at ``now``: expiry, lost dispatch, lease end, retry.

    Expiry is judged by whoever holds the task: here at once for what the coordinator holds
    (``HELD``: backlog, retrying); a queued or dispatched task is the worker's to judge, and ends
    ``expired`` here only if nobody accounted for it by its expiry + ``dispatch_timeout``.

    ``worker_died``: a worker that could have taken this queued task went offline since it was
    seen. A task that kills its worker at once (before the worker announced it ``started``) is
    lost that way: it becomes a suspect, and runs alone next (see the module docstring)."""
    if record.terminal:
        return []
    if record.state in HELD and record.expires_at is not None and record.expires_at <= now:
        return _finish(record, EXPIRED, HELD[record.state], now)
    if record.state == STARTED and (overran := _overran(record, now)) is not None:
        cancel, reason = overran
        effects: list[Effect] = [Cancel(record.worker, record.id, record.attempt, cancel)] if record.worker else []
        return effects + _redispatch(record, now, reason, failed=True, policy=policy)
    if record.deadline is None or record.deadline > now:
        return []
    return _deadline_passed(record, now, policy, worker_died)


def _deadline_passed(record: TaskRecord, now: float, policy: LeasePolicy, worker_died: bool) -> list[Effect]:
    """``on_timer`` once the record's state timer (``deadline``) ran out."""
    if record.state == STARTED:
        return _lost_with_worker(record, now, f"lease of worker {record.worker} expired (no heartbeat)", policy)
    if record.state in (QUEUED, DISPATCHED):
        if record.expires_at is not None and record.expires_at <= now:
            return _expire_unaccounted(record, now, policy)
        if worker_died and record.state == QUEUED:
            return on_lost_unseen(record, now, policy)
        return _redispatch(record, now, "not accounted for by any worker within the dispatch timeout",
                           failed=False, policy=policy)
    if record.state == RETRYING:
        record.attempt += 1
        return _to_backlog(record, now, event="retry")
    if record.state == SCHEDULED:
        return _to_backlog(record, now, event="due")
    return []


def next_due(record: TaskRecord) -> float | None:
    """The earliest time at which ``on_timer`` can change the record (None: never, as it stands)."""
    if record.terminal:
        return None
    times = [record.deadline]
    if record.state == STARTED:
        times += [record.run_deadline, record.step_deadline]
    elif record.state in HELD:
        times.append(record.expires_at)
    known = [t for t in times if t is not None]
    return min(known) if known else None


def extend(record: TaskRecord, now: float, seconds: float) -> None:
    """Push a live record's timer to at least ``now + seconds`` (after a restart or reconnect)."""
    if record.state in (QUEUED, DISPATCHED, STARTED) and record.deadline is not None:
        record.deadline = max(record.deadline, now + seconds)


# -- an operator's requests (rpc ops retry and purge) -------------------------------------------
RETRYABLE = frozenset({DEAD, CANCELLED, EXPIRED})
"""The states ``retry`` runs a task again from: a ``succeeded`` task is never run again."""
PURGEABLE = (BACKLOG, RETRYING, SCHEDULED)
"""What ``purge`` cancels: the states in which the coordinator, and no worker, holds the task."""


def retry_refusal(record: TaskRecord) -> str | None:
    """Why the operator's ``retry`` cannot run this task again, or None when it can."""
    if record.state not in RETRYABLE:
        return (f"task {record.id} is {record.state}: only a dead, cancelled or expired task can be retried"
                + (" (it is still live)" if not record.terminal else ""))
    if record.body is None:
        return f"task {record.id} cannot run again: the task itself was never seen, only its events"
    return None


def on_retry(record: TaskRecord, now: float) -> list[Effect]:
    """An operator runs a finished task again (``retry_refusal`` said it may): a new attempt with a
    fresh attempt budget, its history kept. Its expiry is dropped (the operator decided it runs)
    and a ``not_before`` still ahead holds it again."""
    was = record.state
    record.note(attempt=record.attempt, event="rerun", reason=f"run again by an operator (was {was})", ts=now)
    record.attempt += 1
    record.failures = 0
    record.winner = record.result = record.error = None
    record.reason = f"run again by an operator (was {was}: {record.reason})"
    if record.expires_at is not None and record.body is not None:
        record.expires_at = None
        record.body.pop("expires_at", None)
    if is_delayed(record, now):
        return _schedule(record, now)
    return _to_backlog(record, now, event="requeued")


def on_purged(record: TaskRecord, queue: str, now: float) -> list[Effect]:
    """An operator purged the record's queue while the coordinator held the task: ``cancelled``."""
    if record.terminal or record.state not in PURGEABLE:
        return []
    return _finish(record, CANCELLED, f"purged from queue {queue} by an operator", now)


# -- dispatch ---------------------------------------------------------------------------------
@dataclass
class WorkerView:
    """What the coordinator believes about one worker."""

    worker: str
    state: str = ONLINE
    queues: tuple[str, ...] = ()
    free: int = 0
    concurrency: int = 0
    heartbeat_s: float = 0.0
    last_seen: float = 0.0
    duration: float = 0.0  # moving average of its task run times (0: not known yet)
    full_at: float | None = None  # when it last had no free slot (coordinator clock), from its heartbeat
    lost_at: float | None = None  # when it last went offline
    labels: frozenset[str] = frozenset()  # its capability labels (docs/routing.md)
    code: Mapping[str, str] = field(default_factory=dict)  # module -> version it runs (deploys)


def is_live(w: WorkerView, now: float, policy: LeasePolicy) -> bool:
    """Online, and heard from within its lease (a retained heartbeat is not proof of life)."""
    return w.state == ONLINE and now - w.last_seen <= lease_s(policy, w.heartbeat_s)


def drained(w: WorkerView, since: float, now: float, policy: LeasePolicy) -> bool:
    """Nothing the broker sent the live worker ``w`` before ``since`` can still wait there unseen.

    True when ``w`` is live and its latest heartbeat says it has had a free slot and an empty line
    for one of its heartbeat intervals, counted from ``since`` or from when it was last full,
    whichever is later. A task it received by then has started (its heartbeats list what runs) or
    ended, and its broker queue holds nothing more: a worker with a free slot acknowledges what it
    is sent at once (docs/broker-facts.md). ``since`` is the coordinator's time, and a new leader's
    clock reads the old leader's: a skew between them shortens or lengthens the interval."""
    if not is_live(w, now, policy):
        return False
    free_since = since if w.full_at is None else max(since, w.full_at)
    return w.last_seen - free_since >= (w.heartbeat_s or policy.default_heartbeat_s)


def gone(w: WorkerView, now: float, policy: LeasePolicy) -> bool:
    """Offline, or heard live once and silent past its lease since: what it holds is lost with it.
    (A worker known only from its retained state is neither gone nor ``drained``: not known yet.)"""
    return w.state == OFFLINE or (w.last_seen > 0 and not is_live(w, now, policy))


def may_have_taken(record: TaskRecord, queues: Iterable[str], lost_at: float) -> bool:
    """A worker of ``queues`` went offline at ``lost_at``: the queued record, seen before, may have
    gone down with it unannounced (``lost_unseen`` decides, before its dispatch timeout)."""
    return record.state == QUEUED and record.queue in queues and record.updated <= lost_at


def lost_unseen(record: TaskRecord, workers: Iterable[WorkerView], now: float, policy: LeasePolicy) -> bool:
    """A queued record whose queue lost a worker since it was seen: True once every other worker
    that could have it (``workers``, those of its queue) is ``gone`` or ``drained`` since it was
    seen. Nobody accounts for it then: it went down with the dead worker (``on_lost_unseen``)."""
    return record.state == QUEUED and all(gone(w, now, policy) or drained(w, record.updated, now, policy)
                                          for w in workers)


def dispatch_unseen(record: TaskRecord, w: WorkerView | None, now: float, policy: LeasePolicy) -> bool:
    """A record dispatched to ``w``'s inbox that ``w`` never got: ``w`` is ``drained`` since the
    dispatch and has not listed it (a listed task is ``started``). A leader that died between its
    commit and its publish leaves such records, and a broker may drop a message (docs/broker-facts.md):
    sent again within a heartbeat or two (``on_dispatch_unseen``), not at the dispatch timeout."""
    return (record.state == DISPATCHED and w is not None and w.worker == record.worker
            and drained(w, record.updated, now, policy))


def on_lost_unseen(record: TaskRecord, now: float, policy: LeasePolicy) -> list[Effect]:
    """``lost_unseen``: a suspect now, before its dispatch timeout."""
    return _lost_with_worker(record, now, "not accounted for by any worker, and a worker of its queue went "
                             "offline meanwhile", policy)


def on_dispatch_unseen(record: TaskRecord, now: float, policy: LeasePolicy) -> list[Effect]:
    """``dispatch_unseen``: dispatched again as ``attempt + 1``, not a failure and not a suspect
    (the worker never had it). Should the first copy reach a worker after all, its attempt is stale:
    cancelled when it starts (``on_started``), and a result of it is a duplicate (fencing)."""
    return _redispatch(record, now, f"dispatched to worker {record.worker}, whose heartbeats show room and do "
                       "not list it", failed=False, policy=policy)


def pick_worker(workers: Iterable[WorkerView], queue: str, now: float, policy: LeasePolicy,
                backlog: int = 1) -> WorkerView | None:
    """The live worker serving ``queue`` with the most free slots, or None.

    Earliest finish: a worker whose tasks take longer than the whole fleet needs to drain the
    ``backlog`` (plus one of the fastest worker's tasks) is skipped, so the last tasks of a batch
    wait a moment for a fast worker instead of starting on a slow one.
    """
    live = [w for w in workers if queue in w.queues and is_live(w, now, policy)]
    timed = [w for w in live if w.duration > 0]
    horizon = float("inf")
    if timed:
        rate = sum(max(w.concurrency, 1) / w.duration for w in timed)
        horizon = backlog / rate + min(w.duration for w in timed)
    best: WorkerView | None = None
    for w in live:
        if w.free <= 0 or w.duration > horizon:
            continue
        if best is None or (w.free, -w.duration) > (best.free, -best.duration):
            best = w
    return best


def observe_duration(view: WorkerView, seconds: float, weight: float = 0.2) -> None:
    """Fold one task's run time into the worker's moving average."""
    view.duration = seconds if view.duration <= 0 else (1 - weight) * view.duration + weight * seconds


# -- internals --------------------------------------------------------------------------------
def _lost_with_worker(record: TaskRecord, now: float, reason: str, policy: LeasePolicy) -> list[Effect]:
    """The record went down with its worker (dead, or silent past its lease): convict or suspect."""
    alone = runs_alone(record, policy) and record.state == STARTED  # it ran alone: nothing else could have
    record.losses += 1
    if not alone:
        if record.losses >= policy.max_losses:
            return _finish(record, DEAD, f"lost with its worker {record.losses} times, never convicted "
                           f"running alone; last: {reason}", now)
        nxt = "it runs alone next" if runs_alone(record, policy) else "it runs again with others next"
        return _redispatch(record, now, f"{reason}; a suspect now, {nxt}", failed=False, policy=policy)
    record.kills += 1
    record.failures += 1
    verdict = f"killed its worker {record.kills} time{'s' if record.kills > 1 else ''} running alone"
    record.note(attempt=record.attempt, worker=record.worker, event="killed-worker", reason=reason, ts=now)
    record.error = {"type": "WorkerLost", "message": f"{verdict}; last: {reason}"}
    if record.failures >= max_attempts(policy, record):
        return _finish(record, DEAD, f"{verdict} ({record.failures} failed attempts of "
                       f"{max_attempts(policy, record)}); last: {reason}", now)
    record.attempt += 1
    record.reason = f"{verdict}; last: {reason}"
    return _to_backlog(record, now, event="requeued")


def _redispatch(record: TaskRecord, now: float, reason: str, *, failed: bool, policy: LeasePolicy) -> list[Effect]:
    record.note(attempt=record.attempt, worker=record.worker, event="lost", reason=reason, ts=now)
    if failed:
        record.failures += 1
        if record.failures >= max_attempts(policy, record):
            return _finish(record, DEAD, f"attempts exhausted ({record.failures}); last: {reason}", now)
    if record.body is None:
        return _finish(record, DEAD, f"cannot dispatch again, the task itself was never seen; {reason}", now)
    record.attempt += 1
    record.reason = reason
    return _to_backlog(record, now, event="requeued")


def _overran(record: TaskRecord, now: float) -> tuple[str, str] | None:
    """(what the worker is told, the reason) if a started attempt ran past its timeout (+ grace),
    or reported no progress within its ``step_timeout`` while its worker lives (its heartbeats renew
    the lease, not the step timer): presumed stuck, it is stopped and tried again."""
    if record.run_deadline is not None and record.run_deadline <= now:
        return "time limit exceeded", f"still running past its timeout of {record.timeout}s"
    if record.step_deadline is not None and record.step_deadline <= now:
        reason = f"no progress within its step_timeout of {record.step_timeout:g}s"
        return reason, reason
    return None


def _expire_unaccounted(record: TaskRecord, now: float, policy: LeasePolicy) -> list[Effect]:
    """A queued or dispatched record past its expiry and its dispatch timeout: a worker that took
    it in time would have said ``started`` (or ``expired``) by its expiry + ``dispatch_timeout``;
    until then the worker is the judge. Nobody did: it ends ``expired`` here."""
    assert record.expires_at is not None
    settle_at = record.expires_at + policy.dispatch_timeout
    if now < settle_at:
        record.deadline = settle_at
        return []
    return _finish(record, EXPIRED, "expired: no worker reported it started by then", now)


def _to_backlog(record: TaskRecord, now: float, *, event: str, worker: str | None = None) -> list[Effect]:
    if record.body is None:
        return _finish(record, DEAD, "cannot dispatch, the task itself was never seen", now)
    record.state = BACKLOG
    record.worker = None
    record.deadline = record.run_deadline = record.step_deadline = None
    record.note(attempt=record.attempt, worker=worker, event=event, ts=now)
    record.updated = now
    return [Enqueue(record.id)]


def _schedule(record: TaskRecord, now: float, *, worker: str | None = None) -> list[Effect]:
    """Hold the task until its ``not_before``: no worker holds it meanwhile, none is charged a slot."""
    assert record.not_before is not None
    record.state = SCHEDULED
    record.worker = None
    record.deadline = record.not_before
    record.run_deadline = None
    record.note(attempt=record.attempt, worker=worker, event=SCHEDULED, not_before=record.not_before, ts=now)
    record.updated = now
    return [Announce(SCHEDULED, f"held by the coordinator until not_before ({record.not_before - now:.0f} s)",
                     next_at=record.not_before)]


def _finish(record: TaskRecord, state: str, reason: str, now: float, *, reply: bool = True) -> list[Effect]:
    record.state = state
    record.reason = reason
    record.winner = {"attempt": record.attempt, "worker": None}
    record.deadline = record.run_deadline = record.step_deadline = None
    record.note(attempt=record.attempt, event=state, reason=reason, ts=now)
    record.updated = now
    return [Announce(state, reason, final=True, reply=reply, dead_letter=state == DEAD)]
