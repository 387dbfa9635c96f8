"""Rolling out task code: signed bundles of a task module, pushed to workers that opted in.

Its parts (docs/deploy.md; the security model: docs/security.md, "Deploying code"):

- ``keys``: Ed25519 key pairs (``cryptography``, the ``deploy`` extra): make, load, sign, verify;
- ``bundle``: the signed bundle: build one, read one from the wire, verify it;
- ``selector``: ``all`` / ``worker=a,b`` / ``label=gpu``: which workers a rollout is for;
- ``client``: the operator's queries to the coordinator (start, status, pause, resume, rollback);
- ``cli``: ``mqtt-tasks deploy``.

Elsewhere: the rollout policy (``mqtt_tasks.rollouts``, pure), the coordinator's part that keeps
rollouts in its store and sends the waves (``coordinator/deploys.py``), and the worker's part that
verifies and applies bundles between tasks (``worker/deploys.py``).
"""

from typing import Any

from .selector import Selector, parse

_CLIENT = ("pause_rollout", "resume_rollout", "rollback", "rollout_status", "sign_module", "start_rollout")


def __getattr__(name: str) -> Any:
    """The client functions load on first use (with pydantic): ``mqtt-worker`` never needs them."""
    if name in _CLIENT:
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module 'mqtt_tasks.deploy' has no attribute {name!r}")


__all__ = ["Selector", "parse", "pause_rollout", "resume_rollout", "rollback", "rollout_status", "sign_module",
           "start_rollout"]
