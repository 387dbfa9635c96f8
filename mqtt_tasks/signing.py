"""Optional task signatures: HMAC-SHA256 with a shared secret, in the task's ``sig`` field.

Off unless ``Settings.signing_key`` is set. Producers (``TaskApp``) then add ``sig``; workers
refuse a task whose ``sig`` is missing or wrong, with one report on ``P/errors``, and run nothing.

What is signed (``canonical``): the task's JSON object *as received*, minus

- ``sig`` itself;
- ``attempt``: the coordinator sets it when it re-dispatches, so a retried task still verifies;
- ``alone``: the coordinator sets it on a suspect it dispatches again to run with nothing else
  (poison isolation), with or without the key; replaying a signed task with it only makes the
  task run alone, which replaying it at all already allows;
- ``queue``: filled in from the topic by workers and the coordinator;
- fields whose value is ``null``, and ``args`` / ``kwargs`` when empty (``[]`` / ``{}``): a task
  re-encoded by a worker (hand-back) or the coordinator gains these defaults, and they mean the
  same as an absent field.

Every other field is covered, unknown ones included: ``id``, ``task``, ``args``, ``kwargs``,
``timeout``, ``max_attempts``, ``expires_at``, ``reply_to``, ``correlation`` and a producer's own.
The canonical text is ``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
in UTF-8, after turning every float that is a whole number into an integer (``1.0`` -> ``1``) so
that JSON libraries that drop the ``.0`` produce the same bytes. ``sig`` is the lowercase hex
HMAC-SHA256 of those bytes.

A signature proves who made a task, not that it is fresh: a captured signed task can be
published again. Bound that with ``expires_at`` (signed) and the coordinator's per-id record.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from .errors import SignatureError  # noqa: F401 - raised here, defined with the others
from .protocol.validate import Invalid, load_object

SIG_FIELD = "sig"
UNSIGNED_FIELDS = frozenset({SIG_FIELD, "attempt", "queue", "alone"})
_EMPTY_DEFAULTS: dict[str, Any] = {"args": [], "kwargs": {}}
_MAX_EXACT = 2**53


def key_bytes(key: str | bytes) -> bytes:
    return key.encode() if isinstance(key, str) else bytes(key)


def canonical(task: dict[str, Any]) -> bytes:
    """The bytes that are signed: see the module docstring."""
    body = {k: _normalise(v) for k, v in task.items()
            if k not in UNSIGNED_FIELDS and v is not None and not (k in _EMPTY_DEFAULTS and v == _EMPTY_DEFAULTS[k])}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def signature(task: dict[str, Any], key: str | bytes) -> str:
    return hmac.new(key_bytes(key), canonical(task), hashlib.sha256).hexdigest()


def sign(task: dict[str, Any], key: str | bytes) -> dict[str, Any]:
    """A copy of ``task`` with its ``sig`` field set."""
    return {**task, SIG_FIELD: signature(task, key)}


def verify(task: dict[str, Any], key: str | bytes) -> None:
    """Raise ``SignatureError`` unless ``task`` carries a valid ``sig``."""
    sig = task.get(SIG_FIELD)
    if sig is None:
        raise SignatureError("unsigned task refused: this worker requires signed tasks")
    if not isinstance(sig, str):
        raise SignatureError("task signature refused: 'sig' is not a string")
    try:
        expected = signature(task, key)
    except (TypeError, ValueError) as exc:
        raise SignatureError(f"task signature refused: cannot canonicalise the task ({exc})") from exc
    if not hmac.compare_digest(expected.encode(), sig.lower().encode("utf-8", "surrogatepass")):
        raise SignatureError("task signature refused: 'sig' does not match the task (tampered, or another key)")


def verify_payload(payload: bytes, key: str | bytes) -> None:
    """``verify`` on raw bytes that already decoded as a task (so they are a JSON object)."""
    try:
        task = load_object(payload)
    except Invalid as exc:
        raise SignatureError(f"task signature refused: {exc}") from None
    verify(task, key)


def _normalise(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) <= _MAX_EXACT:
        return int(value)
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


__all__ = ["SIG_FIELD", "UNSIGNED_FIELDS", "SignatureError", "canonical", "key_bytes", "sign", "signature",
           "verify", "verify_payload"]
