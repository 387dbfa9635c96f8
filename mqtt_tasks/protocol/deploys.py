"""Wire models of code rollouts (docs/deploy.md): the signed bundle and a worker's deploy report.

A bundle is what ``mqtt-tasks deploy`` signs and the coordinator hands to each worker of a wave on
``P/deploy/bundle/{worker_id}``; the worker answers on ``P/deploy/status/{worker_id}`` (retained:
the last word of each worker). Only the ``manifest`` is signed; it carries the SHA-256 of
``source``, so the signature covers the code too.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .messages import _Message
from .topics import ID_PATTERN

MODULE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
VERSION_PATTERN = r"^[A-Za-z0-9_.:\-]{1,64}$"
SELECTOR_PATTERN = r"^(all|worker=[A-Za-z0-9_.:\-,]{1,2000}|label=[A-Za-z0-9_.:\-,]{1,400})$"
DeployState = Literal["downloaded", "verified", "applied", "failed"]


class Manifest(_Message):
    """The signed part of a bundle: what the code is, for whom, and in which order it was signed."""

    rollout: str = Field(pattern=ID_PATTERN, description="the rollout this bundle was signed for")
    module: str = Field(pattern=MODULE_PATTERN, description="the Python module the source becomes on the worker")
    version: str = Field(pattern=VERSION_PATTERN, description="the version's name (a label; order is `serial`)")
    serial: int = Field(ge=1, description="signing order: a worker refuses a serial at or below the one it "
                                         "runs for this module (replay, downgrade)")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of `source` as UTF-8, lowercase hex")
    to: str = Field(pattern=SELECTOR_PATTERN, description="the selector: a worker it does not select refuses "
                                                          "the bundle")
    key: str = Field(pattern=r"^[0-9a-f]{16}$", description="the signing key's id (first 16 hex of the SHA-256 "
                                                           "of its raw public key)")
    created: float = Field(description="signing time, seconds since the epoch")
    rollback_of: str | None = Field(default=None, pattern=ID_PATTERN, description="the rollout it undoes")


class Bundle(_Message):
    """``P/deploy/bundle/{worker_id}``: a task module's source, its manifest and the signature."""

    manifest: Manifest
    source: str = Field(description="the module's Python source text")
    sig: str = Field(pattern=r"^[A-Za-z0-9+/=]{86,88}$",
                     description="Ed25519 signature of the canonical manifest JSON, base64")


class DeployReport(_Message):
    """``P/deploy/status/{worker_id}`` (retained): a worker's word on a bundle."""

    worker: str = Field(pattern=ID_PATTERN)
    rollout: str | None = Field(default=None, description="absent when the bundle could not be read")
    module: str | None = None
    version: str | None = None
    serial: int | None = None
    state: DeployState
    reason: str | None = Field(default=None, description="why it failed")
    running: dict[str, str] = Field(default_factory=dict, description="module -> version this worker runs "
                                                                      "after this step")
    restored: bool | None = Field(default=None, description="applied from the deploy directory at start-up")
    ts: float
