"""Ed25519 keys for code bundles: make a pair, load either half, sign, verify.

Needs the ``cryptography`` package (``pip install 'mqtt-tasks[deploy]'``), imported only here and
only when a key is used: a worker that does not accept deploys never imports it.

Files: the private key is PKCS#8 PEM, unencrypted, written with mode 0600 (keep it off the fleet:
whoever holds it can run code on every worker that trusts its public half); the public key is
SubjectPublicKeyInfo PEM, safe to copy to every worker. A key's id is the first 16 hex digits of
the SHA-256 of its raw 32 public bytes; bundles name it so a refusal can say which key signed.
"""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Any

from ..errors import ConfigError, SignatureError

_MISSING = "code bundles need the cryptography package: pip install 'mqtt-tasks[deploy]'"


def _serialization() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError:  # pragma: no cover - the test extra has it
        raise ConfigError(_MISSING) from None
    return serialization


def _ed25519() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # pragma: no cover
        raise ConfigError(_MISSING) from None
    return ed25519


def keygen(private_path: str, public_path: str) -> str:
    """Write a new key pair (the private half with mode 0600, never over an existing file); its id."""
    serialization = _serialization()
    private = _ed25519().Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot write the private key {private_path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    try:
        with open(public_path, "xb") as out:
            out.write(public_pem)
    except OSError as exc:
        raise ConfigError(f"cannot write the public key {public_path}: {exc.strerror}") from None
    return key_id(private.public_key())


def _read(path: str, kind: str) -> bytes:
    try:
        with open(path, "rb") as source:
            return source.read()
    except OSError as exc:
        raise ConfigError(f"cannot read the {kind} key {path}: {exc.strerror}") from None


def load_private(path: str) -> Any:
    """An Ed25519 private key from a PEM file; ``ConfigError`` naming the file otherwise."""
    return _load_pem(path, "private")


def load_public(path: str) -> Any:
    """An Ed25519 public key from a PEM file; ``ConfigError`` naming the file otherwise."""
    return _load_pem(path, "public")


def _load_pem(path: str, kind: str) -> Any:
    serialization, ed25519 = _serialization(), _ed25519()
    from cryptography.exceptions import UnsupportedAlgorithm

    private, raw = kind == "private", _read(path, kind)
    try:
        key = serialization.load_pem_private_key(raw, password=None) if private \
            else serialization.load_pem_public_key(raw)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        what = "an unencrypted PEM private key" if private else "a PEM public key"
        raise ConfigError(f"{path} is not {what} ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 {kind} key")
    return key


def key_id(public: Any) -> str:
    raw = public.public_bytes(_serialization().Encoding.Raw, _serialization().PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(private: Any, data: bytes) -> str:
    return base64.b64encode(private.sign(data)).decode()


def verify(public: Any, data: bytes, sig: str) -> None:
    """Raise ``SignatureError`` unless ``sig`` (base64) is ``public``'s signature of ``data``."""
    from cryptography.exceptions import InvalidSignature

    try:
        public.verify(base64.b64decode(sig, validate=True), data)
    except (InvalidSignature, ValueError):
        raise SignatureError("bundle signature refused: it does not verify with this worker's deploy key "
                             "(tampered, or signed by another key)") from None
