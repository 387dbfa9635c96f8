"""Rollouts of code bundles: the coordinator's durable record of who got which version, and the waves.

Built on these facts (docs/deploy.md; the policy is ``mqtt_tasks.rollouts``, pure):

- ``mqtt-tasks deploy`` signs a bundle and hands it over with the ``deploy.start`` query; the
  coordinator never holds a signing key and cannot change a bundle (the signature covers the
  manifest, the manifest the source's SHA-256 and the selector): it only decides *when* each
  worker gets it. Targets are the live workers the selector matches at the start (heartbeat labels);
  unless the rollout is a snapshot, a worker heard live later joins it (``on_heard``, called for
  every live heartbeat: a dict lookup per module with a current rollout, ``rollouts.join``
  decides), and its bundle goes out with the next wave.
- A rollout is a store record (``Store.put_rollout``) written in the batch that decided its wave;
  the bundles of a wave go out after the commit (``Effects.send``). A coordinator killed between
  the two finds the wave ``sent`` and no answer: the worker's timeout judges it; one killed after
  sending does not send it twice. Workers answer a redelivered bundle with what they did.
- Workers' answers arrive on ``P/deploy/status/+`` (retained, so a restarted coordinator reads the
  last word of each worker again; an answer for a step already recorded changes nothing).
- ``tick`` runs after every batch while online, and costs one comparison until the earliest wave
  or timeout is due.
- Queries: ``deploy.start``, ``deploy.status`` (one, or all), ``deploy.pause``, ``deploy.resume``.
  A rollback is a new rollout (signed by the operator over the previous version's code, for the
  selector of the one it undoes) that names the one it undoes (``rollback_of``): that one is
  stopped (``aborted``) and marked rolled back; the live workers whose heartbeat ``code`` says they
  run the previous version already are recorded ``applied``, not sent it.
- A target that timed out without a word waits for a retry (``rollouts``): ``on_heard`` sends it
  again, like a joiner, while the rollout is its module's current one.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from .. import rollouts
from ..errors import ConfigError, DecodeError
from ..protocol import codec
from ..protocol.deploys import Bundle, DeployReport
from ..rollouts import Rollout

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..protocol.topics import Topics
    from ..store.base import Store
    from ..transport import Message
    from .effects import Effects
    from .fleet import Fleet

log = logging.getLogger(__name__)

_NEVER = float("inf")


class Rollouts:
    """The rollouts by id, their ``deploy.*`` queries, the workers' answers, and the waves."""

    def __init__(self, topics: Topics, store: Store, fleet: Fleet, effects: Effects,
                 clock: Callable[[], float]) -> None:
        self._topics, self._store, self._fleet, self._effects, self._clock = topics, store, fleet, effects, clock
        self.by_id: dict[str, Rollout] = {}
        self._current: dict[str, Rollout] = {}  # module -> its newest rollout: the one joiners may get
        self._wake = _NEVER
        self.ops: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "deploy.start": self.op_start, "deploy.status": self.op_status, "deploy.pause": self.op_pause,
            "deploy.resume": self.op_resume}

    def recover(self) -> int:
        for data in self._store.load_rollouts():
            rollout = Rollout.from_dict(data)
            self.by_id[rollout.id] = rollout
        self._current = rollouts.current(self.by_id.values())
        self._rewake()
        return len(self.by_id)

    # -- queries ---------------------------------------------------------------------------
    def op_start(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            rollout = self._new(request)
        except (ConfigError, ValidationError, ValueError, TypeError) as exc:
            return {"ok": False, "error": _why(exc)}
        undone = self.by_id.get(rollout.rollback_of or "")
        if undone is not None:
            undone.rolled_back_by = rollout.id
            if undone.state in (rollouts.RUNNING, rollouts.PAUSED):
                undone.state, undone.reason = rollouts.ABORTED, f"rolled back by {rollout.id}"
            self._save(undone)
        self.by_id[rollout.id] = rollout
        self._current = rollouts.current(self.by_id.values())
        log.info("coordinator: rollout %s of %s %s to %s: %d worker(s), waves of %d%s", rollout.id, rollout.module,
                 rollout.version, rollout.to, len(rollout.workers), rollout.wave_size,
                 "" if rollout.snapshot else "; workers heard later join")
        self.tick(self._clock(), force=True)
        return {"ok": True, "rollout": view(rollout)}

    def _new(self, request: dict[str, Any]) -> Rollout:
        bundle = Bundle.model_validate(request.get("bundle"))
        m = bundle.manifest
        if m.rollout in self.by_id:
            raise ConfigError(f"rollout {m.rollout} exists already")
        now, snapshot = self._clock(), request.get("snapshot", False)
        if not isinstance(snapshot, bool):
            raise ConfigError("snapshot must be true or false")
        live = self._fleet.live(now)
        targets = rollouts.targets(m.to, ((w.worker, w.labels) for w in live), snapshot)
        previous = [r for r in self.by_id.values() if r.module == m.module and r.applied()]
        rollout = Rollout(id=m.rollout, module=m.module, version=m.version, serial=m.serial, to=m.to,
                          bundle=bundle.model_dump(exclude_none=True), workers=targets, snapshot=snapshot,
                          wave_size=_int(request, "wave_size", 1, 1), rate=_number(request, "rate"),
                          abort_pct=_number(request, "abort_pct"), min_executed=_int(request, "min_executed", 1, 1),
                          timeout_s=_number(request, "timeout") or rollouts.DEFAULT_TIMEOUT_S, created=now,
                          retries=_int(request, "retries", rollouts.DEFAULT_RETRIES, 0),
                          updated=now, rollback_of=m.rollback_of,
                          previous=max(previous, key=lambda r: r.serial).id if previous else None)
        if rollout.abort_pct is not None and not 0 <= rollout.abort_pct <= 100:
            raise ConfigError("abort_pct must be between 0 and 100")
        if rollout.rollback_of is not None:  # to the undone one's selector: who runs the old version is done
            rollouts.skip_running(rollout, {w.worker: w.code for w in live}, now)
        return rollout

    def op_status(self, request: dict[str, Any]) -> dict[str, Any]:
        rollout_id = request.get("id")
        if rollout_id is None:
            return {"ok": True, "rollouts": [view(r) for r in sorted(self.by_id.values(), key=lambda r: r.created)]}
        rollout = self.by_id.get(rollout_id) if isinstance(rollout_id, str) else None
        if rollout is None:
            return {"ok": False, "not_found": True, "error": f"no rollout {rollout_id!r}"}
        answer = view(rollout)
        if request.get("bundle"):
            answer["bundle"] = rollout.bundle
        return {"ok": True, "rollout": answer}

    def op_pause(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._move(request, rollouts.PAUSED)

    def op_resume(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._move(request, rollouts.RUNNING)

    def _move(self, request: dict[str, Any], after: str) -> dict[str, Any]:
        rollout = self.by_id.get(str(request.get("id")))
        if rollout is None:
            return {"ok": False, "not_found": True, "error": f"no rollout {request.get('id')!r}"}
        refused = rollouts.move(rollout, after, self._clock())
        if refused:
            return {"ok": False, "error": refused}
        self._save(rollout)
        log.info("coordinator: rollout %s %s", rollout.id, after)
        self.tick(self._clock(), force=True)
        return {"ok": True, "rollout": view(rollout)}

    # -- the workers' answers ------------------------------------------------------------------
    def on_report(self, message: Message) -> None:
        if not message.payload:
            return  # a retained report cleared
        try:
            report = DeployReport.model_validate_json(message.payload)
        except ValidationError as exc:
            raise DecodeError(f"invalid deploy report: {_why(exc)}", payload=message.payload,
                              topic=message.topic) from None
        rollout = self.by_id.get(report.rollout or "")
        if rollout is None or report.serial != rollout.serial:
            return  # another rollout's (or before this coordinator's record): nothing to judge
        if rollouts.on_report(rollout, report.worker, report.state, report.reason, self._clock()):
            log.info("coordinator: rollout %s: worker %s %s%s", rollout.id, report.worker, report.state,
                     f" ({report.reason})" if report.reason else "")
            self._save(rollout)
            self.tick(self._clock(), force=True)

    # -- workers heard later ----------------------------------------------------------------------
    def on_heard(self, worker: str, labels: frozenset[str], code: dict[str, str], now: float) -> None:
        """A live heartbeat of ``worker``: it joins the current rollouts that take it (``rollouts.join``)."""
        joined = False
        for rollout in self._current.values():
            if rollouts.join(rollout, worker, labels, code, now):
                step = rollout.workers[worker]
                log.info("coordinator: rollout %s: worker %s joined (%s)", rollout.id, worker,
                         step.reason or f"{rollout.to}, heard after the start")
                self._save(rollout)
                joined = True
        if joined:
            self.tick(now, force=True)

    # -- the waves ---------------------------------------------------------------------------
    def tick(self, now: float, force: bool = False) -> None:
        if now < self._wake and not force:
            return
        for rollout in self.by_id.values():
            if rollout.state in (rollouts.ABORTED, rollouts.COMPLETED, rollouts.WAITING):
                continue
            before = (rollout.state, rollout.updated)
            wave = rollouts.step(rollout, now)
            payload = codec.encode(rollout.bundle) if wave else b""
            for worker in wave:
                self._effects.send(self._topics.deploy_bundle(worker), payload)
            if wave:
                log.info("coordinator: rollout %s wave %d: %s", rollout.id, rollout.waves, ", ".join(wave))
            if before != (rollout.state, rollout.updated):
                self._save(rollout)
                if rollout.state != before[0]:
                    log.info("coordinator: rollout %s %s%s", rollout.id, rollout.state,
                             f": {rollout.reason}" if rollout.reason else "")
        self._rewake()

    def _save(self, rollout: Rollout) -> None:
        self._store.put_rollout(rollout.id, rollout.to_dict())

    def _rewake(self) -> None:
        due = [rollouts.next_due(r) for r in self.by_id.values()]
        self._wake = min((d for d in due if d is not None), default=_NEVER)


def view(rollout: Rollout) -> dict[str, Any]:
    """A rollout as ``deploy.status`` answers it (the bundle's source left out)."""
    data = rollout.to_dict()
    data.pop("bundle")
    data["counts"] = rollout.counts()
    data["workers"] = {w: {k: v for k, v in step.items() if v is not None} for w, step in data["workers"].items()}
    return {k: v for k, v in data.items() if v is not None}


def _number(request: dict[str, Any], name: str) -> float | None:
    value = request.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"{name} must be a number >= 0")
    return float(value)


def _int(request: dict[str, Any], name: str, default: int, least: int) -> int:
    value = request.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{name} must be an integer >= {least}")
    return value


def _why(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        error = exc.errors()[0]
        return f"{'.'.join(str(p) for p in error.get('loc', ())) or 'request'}: {error.get('msg')}"
    return str(exc)
