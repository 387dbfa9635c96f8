"""The operator's side of a rollout: sign and hand a bundle to the coordinator, ask, pause, roll back.

Each call is one ``deploy.*`` op on the coordinator's deploy topic ``P/rpc/deploy`` (docs/deploy.md). Signing
happens here, on the operator's machine, with the private key; the coordinator only ever sees
signed bundles.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from ..config import Settings
from ..coordinator import queries
from ..errors import ConfigError, MqttTasksError, TaskNotFoundError
from . import bundle as bundles
from . import keys
from .selector import parse as parse_selector


def rollout_id(module: str, version: str) -> str:
    return f"{module}-{version}"[:110] + "-" + uuid.uuid4().hex[:8]


def sign_module(path: str, *, version: str, to: str, private_key_path: str, module: str | None = None,
                rollback_of: str | None = None, serial: int | None = None) -> dict[str, Any]:
    """The signed bundle of the module file at ``path``; ``ConfigError`` naming what is wrong."""
    selector = str(parse_selector(to))
    try:
        with open(path, encoding="utf-8") as source_file:
            source = source_file.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the module {path}: {getattr(exc, 'strerror', None) or exc}") from None
    name = module or os.path.splitext(os.path.basename(path))[0]
    return bundles.make(source, module=name, version=version, to=selector, rollout=rollout_id(name, version),
                        private_key=keys.load_private(private_key_path), rollback_of=rollback_of, serial=serial)


def start_rollout(settings: Settings, bundle: dict[str, Any], *, wave_size: int = 1, rate: float | None = None,
                  abort_pct: float | None = None, min_executed: int = 1, timeout_s: float | None = None,
                  retries: int | None = None, snapshot: bool = False, timeout: float = 5.0) -> dict[str, Any]:
    """Hand a signed bundle to the coordinator; the rollout as it started (its first wave is out).
    Workers the selector matches that the coordinator hears later join it, unless ``snapshot``;
    a worker that timed out without an answer is sent it again when heard, ``retries`` times
    (the coordinator's default: 3)."""
    request = {"op": "deploy.start", "bundle": bundle, "wave_size": wave_size, "rate": rate, "abort_pct": abort_pct,
               "min_executed": min_executed, "timeout": timeout_s, "retries": retries, "snapshot": snapshot or None}
    return _rollout(_ask(settings, {k: v for k, v in request.items() if v is not None}, timeout), "start")


def rollout_status(settings: Settings, rollout_id: str | None = None, *, bundle: bool = False,
                   timeout: float = 5.0) -> Any:
    """One rollout (``rollout_id``), or all of them, oldest first."""
    if rollout_id is None:
        answer = _ask(settings, {"op": "deploy.status"}, timeout)
        return answer.get("rollouts", [])
    return _rollout(_ask(settings, {"op": "deploy.status", "id": rollout_id, "bundle": bundle}, timeout), "find")


def pause_rollout(settings: Settings, rollout_id: str, timeout: float = 5.0) -> dict[str, Any]:
    return _rollout(_ask(settings, {"op": "deploy.pause", "id": rollout_id}, timeout), "pause")


def resume_rollout(settings: Settings, rollout_id: str, timeout: float = 5.0) -> dict[str, Any]:
    return _rollout(_ask(settings, {"op": "deploy.resume", "id": rollout_id}, timeout), "resume")


def rollback(settings: Settings, rollout_id: str, private_key_path: str, *, wave_size: int = 1,
             rate: float | None = None, timeout: float = 5.0) -> dict[str, Any]:
    """Sign the previous version's code again (a new serial) for the selector of ``rollout_id``, and
    start that rollout; the one undone stops. The coordinator sends it to the workers not already on
    the previous version, and (a continuous rollout) to those it matches that it hears later."""
    undone = rollout_status(settings, rollout_id, timeout=timeout)
    if not any(step.get("state") == "applied" for step in undone["workers"].values()):
        raise MqttTasksError(f"rollout {rollout_id}: no worker applied it, so there is nothing to roll back")
    if not undone.get("previous"):
        raise MqttTasksError(f"rollout {rollout_id}: the coordinator has no earlier rollout of {undone['module']} "
                             "that a worker applied; deploy the old module file as a new version instead")
    old = rollout_status(settings, undone["previous"], bundle=True, timeout=timeout)["bundle"]
    manifest = old["manifest"]
    serial = max(int(time.time() * 1000), int(undone["serial"]) + 1)
    signed = bundles.make(old["source"], module=manifest["module"], version=manifest["version"],
                          to=undone["to"], rollout=rollout_id_for_rollback(rollout_id),
                          private_key=keys.load_private(private_key_path), rollback_of=rollout_id, serial=serial)
    return start_rollout(settings, signed, wave_size=wave_size, rate=rate, timeout=timeout)


def rollout_id_for_rollback(rollout_id: str) -> str:
    return rollout_id[:110] + "-rb-" + uuid.uuid4().hex[:4]


def _ask(settings: Settings, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """A ``deploy.*`` op on ``P/rpc/deploy``, answered under ``P/replies/{username}/`` when the
    settings carry a username: with ACLs on, that is all the deployer role may write and read
    (``protocol.rpc``, docs/security.md)."""
    return queries._ask(settings, request, timeout)


def _rollout(answer: dict[str, Any], action: str) -> dict[str, Any]:
    if not answer.get("ok"):
        error = TaskNotFoundError if answer.get("not_found") else MqttTasksError
        raise error(str(answer.get("error") or f"the coordinator refused to {action} the rollout"))
    rollout: dict[str, Any] = answer["rollout"]
    return rollout
