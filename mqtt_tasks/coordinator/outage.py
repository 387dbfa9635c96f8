"""The store outage: what the coordinator does while its store cannot commit (a full or read-only disk).

Built on these facts:

- A failed ``commit`` keeps the store's buffered records (``store.base``), and the live records
  in memory are the newest state of every task: the next commit that succeeds writes them all.
  Nothing decided during the outage is lost while the process lives.
- The loop acknowledges a message only after a commit that covers it. While commits fail the
  messages stay unacknowledged in the coordinator's persistent MQTT session, so a crash or a stop
  during the outage loses none of them: the broker delivers them again to the next coordinator,
  and the handlers treat a redelivery as the echo it is (docs/broker-facts.md: manual acks work for
  QoS 1; the coordinator's Receive Maximum of 65535 lets the broker keep sending meanwhile).
- What the coordinator decides (dispatches, retries, dead letters) waits for the commit as
  always; only what states no decision goes out at once: answers to queries, from memory, and
  the presence. Timers and backlog dispatch pause: a dispatch that nobody can record would be
  repeated by a coordinator that restarts.
- Retrying a failed commit on every batch would be a busy loop that floods the log: retries
  back off (``RETRY_MIN_S`` doubling to ``RETRY_MAX_S``, with jitter). The outage is said once
  when it begins and once when it ends (a log line, an error report on ``P/errors``, the retained
  presence ``degraded`` then ``online`` again), never per retry.
"""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING

from ..protocol.states import DEGRADED, ONLINE

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..errors import StoreError

log = logging.getLogger(__name__)

RETRY_MIN_S = 0.2
"""The first retry of a failed commit comes this long after the failure."""
RETRY_MAX_S = 5.0
"""Retries back off to at most this far apart: how long a coordinator may take to notice the disk is back."""


class Outage:
    """Whether the store can commit, when to try again, and the two announcements of an outage.

    ``announce(reason, state)`` publishes an error report and the retained presence at once
    (not after a commit); ``monotonic`` is the clock of the backoff.
    """

    def __init__(self, announce: Callable[[str, str], None], *,
                 monotonic: Callable[[], float] = time.monotonic,
                 jitter: Callable[[], float] = random.random) -> None:
        self._announce = announce
        self._monotonic = monotonic
        self._jitter = jitter
        self.since: float | None = None
        self.failures = 0
        self._next_try = 0.0
        self._delay = RETRY_MIN_S

    @property
    def down(self) -> bool:
        return self.since is not None

    @property
    def presence(self) -> str:
        """The coordinator's presence as its store allows: ``online`` or ``degraded``."""
        return DEGRADED if self.down else ONLINE

    def due(self) -> bool:
        """Whether a commit should be tried now (always, unless an outage's backoff says wait)."""
        return self.since is None or self._monotonic() >= self._next_try

    def failed(self, exc: StoreError, unacked: int) -> None:
        """A commit failed: schedule the next try, and say so if this begins an outage."""
        now = self._monotonic()
        self.failures += 1
        if self.since is None:
            self.since = now
            self._delay = RETRY_MIN_S
            reason = (f"{exc}: not acknowledging ({unacked} message(s) held); retrying with backoff, "
                      f"up to every {RETRY_MAX_S:g}s")
            log.error("coordinator: %s", reason)
            self._announce(reason, DEGRADED)
        else:
            log.debug("coordinator: commit retry %d failed: %s", self.failures, exc)
            self._delay = min(self._delay * 2, RETRY_MAX_S)
        self._next_try = now + self._delay * (0.5 + self._jitter() / 2)

    def recovered(self, path: str, written: int, acked: int) -> float:
        """A commit succeeded after an outage: say so, with how long it lasted; returns that."""
        assert self.since is not None
        down_s = self._monotonic() - self.since
        reason = (f"store {path}: committing again after {down_s:.1f}s and {self.failures} failed commit(s): "
                  f"{written} record(s) that waited written, {acked} message(s) acknowledged")
        log.warning("coordinator: %s", reason)
        self.since, self.failures = None, 0
        self._announce(reason, ONLINE)
        return down_s

    def stopping(self, unacked: int) -> None:
        """The coordinator stops with its store still failing: what is left to whom."""
        log.error("coordinator: stopping with the store still failing: %d message(s) left unacknowledged "
                  "for the broker to deliver again to the next coordinator", unacked)
