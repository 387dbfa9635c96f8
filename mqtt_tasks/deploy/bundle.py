"""A code bundle: build and sign one (``make``), read and check one (``read``, ``verify``).

What is signed: the manifest alone, as ``json.dumps(manifest, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`` in UTF-8 (``canonical``); it holds the SHA-256 of the source, so changing one
byte of the code breaks the signature. The signature is Ed25519 (``keys``), base64 in ``sig``.

``serial`` orders bundles of one module: the signing time in milliseconds, or one more than the
bundle it follows if the clock says less. A worker refuses a serial below the one it runs (a
replayed or downgraded bundle); the same serial again is the same bundle (a redelivery), answered
with what the worker did the first time. A rollback is a new signature over the old code with a
new serial: going back needs the signer's key, like going forward.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from typing import Any

from pydantic import ValidationError

from ..errors import ConfigError, SignatureError
from ..protocol.deploys import Bundle
from . import keys

MAX_BUNDLE = 200_000
"""A bundle is at most this many bytes as JSON: it travels in one MQTT message (the ``deploy.start``
query, then to each worker), under the 256 KiB payload cap with room for the query around it."""
RESERVED_MODULES = frozenset(sys.stdlib_module_names) | {"mqtt_tasks", "paho", "pydantic", "click", "cryptography"}
"""Module names a bundle may not take: it would replace them in the worker's ``sys.modules``."""


def check_module_name(module: str) -> None:
    if module in RESERVED_MODULES:
        raise ConfigError(f"module name {module!r} is taken by the standard library or mqtt-tasks itself: "
                          "name the bundle's module otherwise (--module)")


def canonical(manifest: dict[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if v is not None}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def make(source: str, *, module: str, version: str, to: str, rollout: str, private_key: Any,
         serial: int | None = None, rollback_of: str | None = None) -> dict[str, Any]:
    """A signed bundle (its JSON object), checked against the wire model; ``ConfigError`` if it is not one."""
    check_module_name(module)
    data = source.encode()
    manifest = {"rollout": rollout, "module": module, "version": version,
                "serial": serial or int(time.time() * 1000), "sha256": hashlib.sha256(data).hexdigest(),
                "to": to, "key": keys.key_id(private_key.public_key()), "created": time.time(),
                "rollback_of": rollback_of}
    bundle = {"manifest": {k: v for k, v in manifest.items() if v is not None}, "source": source,
              "sig": keys.sign(private_key, canonical(manifest))}
    try:
        Bundle.model_validate(bundle)
    except ValidationError as exc:
        raise ConfigError(f"invalid bundle: {_first(exc)}") from None
    size = len(json.dumps(bundle).encode())
    if size > MAX_BUNDLE:
        raise ConfigError(f"the bundle is {size} bytes as JSON; at most {MAX_BUNDLE} travel in one message")
    return bundle


def read(payload: bytes) -> Bundle:
    """A bundle from the wire; ``SignatureError`` (it cannot be trusted) with the reason otherwise."""
    try:
        return Bundle.model_validate_json(payload)
    except ValidationError as exc:
        raise SignatureError(f"malformed bundle refused: {_first(exc)}") from None


def verify(bundle: Bundle, public_key: Any) -> None:
    """Raise ``SignatureError`` unless the manifest is signed by ``public_key`` and the source is its source."""
    manifest = bundle.manifest.model_dump(exclude_none=True)
    keys.verify(public_key, canonical(manifest), bundle.sig)
    if hashlib.sha256(bundle.source.encode()).hexdigest() != bundle.manifest.sha256:
        raise SignatureError("bundle refused: its source does not match the signed SHA-256")


def _first(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error.get("loc", ())) or "bundle"
    return f"{where}: {error.get('msg')}"
