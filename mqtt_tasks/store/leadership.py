"""Leadership of a prefix: a lease row with an epoch, in the coordinator's own database.

Several coordinators share one prefix and one database; the one holding the row ``leadership``
of its prefix leads. The row says who (``holder``), under which ``epoch`` and until when
(``expires``, on the database's clock, so the coordinators' own clocks do not matter).

- ``acquire``: one statement takes the row when it has run out (or is new), with ``epoch + 1``.
  Two standbys racing for it serialise on the row; one gets it. A database whose row names another
  prefix is refused: the task records carry no prefix, so two groups would share them.
- ``check`` runs inside every commit's transaction (``SQLiteStore._write``): it renews the lease
  ``WHERE epoch = <ours>``; when another coordinator took the row meanwhile it matches nothing,
  and the whole batch rolls back with ``LeadershipLostError``. A commit sends the renewal
  (``renew``) with the batch's rows and reads its row count (``verify``) before its COMMIT: on
  PostgreSQL both go in one pipelined round trip, and the COMMIT only after ``verify``. A deposed
  leader can therefore write nothing, and since the coordinator acknowledges and publishes only
  after a commit, it can do nothing else either (the pattern of Temporal's ``range_id`` and
  Hatchet's lease rows; no advisory locks, which poolers break).
- ``valid``: the leader's own view, on its monotonic clock: the lease it last renewed runs out
  ``ttl`` after that transaction *began*, so it runs out here before it runs out in the database
  (where it was written later), and the leader stops a ``MARGIN`` earlier still. A leader cut from
  its database sees this and steps down before a standby can take over.
- ``unstick``: a leader cut off in the middle of a commit leaves the row locked; once the lease
  has run out in the database, a standby ends that session (PostgreSQL) and takes the row.
- ``due``: an idle leader commits nothing, yet its lease must be renewed: a commit with nothing
  buffered still writes when a third of the ``ttl`` has gone by.

The SQL is the stores' common dialect (``?`` placeholders, ``ON CONFLICT ... DO UPDATE``); the
store supplies its clock as ``NOW``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, LeadershipLostError

if TYPE_CHECKING:
    from .sqlite import SQLiteStore

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 5.0
"""How long a lease lasts without renewal: a dead leader is replaced about this long after it died."""
MARGIN = 0.2
"""A leader stops acting when this share of the ``ttl`` is still left on its own clock: room for
clocks that run at slightly different rates, and for the time it takes to drop its connection."""


class Lease:
    """One coordinator's claim on the leadership of ``prefix``, held in ``store``'s database."""

    def __init__(self, store: SQLiteStore, prefix: str, holder: str, ttl: float = DEFAULT_TTL_S, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store, self.prefix, self.holder, self.ttl = store, prefix, holder, ttl
        self.epoch: int | None = None
        self._monotonic = monotonic
        self._until = 0.0  # local monotonic time the lease runs out
        self._renewed = 0.0
        self._began = 0.0
        now = store.NOW
        self._take = (f"INSERT INTO leadership (prefix, holder, epoch, expires) VALUES (?, ?, 1, {now} + ?) "
                      f"ON CONFLICT (prefix) DO UPDATE SET holder = excluded.holder, epoch = leadership.epoch + 1, "
                      f"expires = excluded.expires WHERE leadership.expires < {now}")
        self._renew = (f"UPDATE leadership SET expires = {now} + ? "
                       f"WHERE prefix = ? AND holder = ? AND epoch = ?")
        self._release = "UPDATE leadership SET expires = 0 WHERE prefix = ? AND holder = ? AND epoch = ?"

    # -- standby ---------------------------------------------------------------------------
    def acquire(self) -> bool:
        """Take the lease if it has run out; True when this coordinator leads now (a new epoch)."""
        began = self._monotonic()
        row = self.store.transact(self._acquire)
        if row is None:
            return False
        self.epoch = int(row)
        self._began = began
        self.committed()
        log.info("leadership of %s taken by %s (epoch %d)", self.prefix, self.holder, self.epoch)
        return True

    def _acquire(self, db: Any) -> int | None:
        other = db.execute("SELECT prefix FROM leadership WHERE prefix <> ?", (self.prefix,)).fetchone()
        if other is not None:  # the records have no prefix column: two prefixes would share them
            raise ConfigError(f"the database holds the record of prefix {other[0]!r}, not {self.prefix!r}: "
                              "use one database per prefix")
        if db.execute(self._take, (self.prefix, self.holder, self.ttl)).rowcount != 1:
            return None
        return int(db.execute("SELECT epoch FROM leadership WHERE prefix = ?", (self.prefix,)).fetchone()[0])

    def current(self) -> tuple[str, int, float] | None:
        """(holder, epoch, seconds until it runs out on the database's clock), or None."""
        return self.store.transact(self._current)

    def _current(self, db: Any) -> tuple[str, int, float] | None:
        row = db.execute(f"SELECT holder, epoch, expires - {self.store.NOW} FROM leadership WHERE prefix = ?",
                         (self.prefix,)).fetchone()
        return (str(row[0]), int(row[1]), float(row[2])) if row is not None else None

    def unstick(self) -> int:
        """After an ``acquire`` that failed (PostgreSQL's ``lock_timeout``): if the lease has run out in
        the database yet its row stays locked, the transaction holding it hangs on a link that went
        silent mid-commit (its server process blocked writing to a socket nobody reads: no
        idle-in-transaction timeout ends that). Its leader stopped acting when the lease ran out on
        its own clock, and nothing of that transaction was acknowledged: end it
        (``store.end_lock_holders``), so the row can be taken. Returns how many sessions ended."""
        end = getattr(self.store, "end_lock_holders", None)
        state = self.current()
        if end is None or state is None or state[2] >= 0:
            return 0
        return int(self.store.transact(lambda db: end(db, "leadership")))

    # -- leader ----------------------------------------------------------------------------
    def check(self, db: Any) -> None:
        """Inside a commit's transaction: renew, or raise ``LeadershipLostError`` (the batch rolls back)."""
        self.verify(self.renew(db))

    def renew(self, db: Any) -> Any:
        """Inside a commit's transaction: send the renewal; its cursor goes to ``verify`` before the
        COMMIT (on PostgreSQL the two may be one round trip apart, with the batch's rows between)."""
        self._began = self._monotonic()
        if self.epoch is None:
            raise LeadershipLostError(f"coordinator {self.holder} does not lead {self.prefix}")
        return db.execute(self._renew, (self.ttl, self.prefix, self.holder, self.epoch))

    def verify(self, cursor: Any) -> None:
        """The renewal matched this coordinator's epoch, or ``LeadershipLostError`` (the batch rolls back)."""
        if cursor.rowcount != 1:
            self._until = 0.0
            raise LeadershipLostError(f"coordinator {self.holder} no longer leads {self.prefix}: epoch "
                                      f"{self.epoch} was taken over", epoch=self.epoch)

    def committed(self) -> None:
        """The transaction that renewed the lease committed: it runs until ``ttl`` after it began."""
        self._renewed = self._began
        self._until = self._began + self.ttl

    def due(self) -> bool:
        return self.epoch is not None and self._monotonic() - self._renewed > self.ttl / 3

    def valid(self) -> bool:
        """Whether this coordinator may still act as the leader (its own, conservative view)."""
        return self.epoch is not None and self._monotonic() < self._until - MARGIN * self.ttl

    def release(self) -> None:
        """Give the lease up (a clean stop, or a leader cut from its broker): a standby need not wait."""
        if self.epoch is None:
            return
        epoch, self.epoch, self._until = self.epoch, None, 0.0
        self.store.transact(lambda db: db.execute(self._release, (self.prefix, self.holder, epoch)))
        log.info("leadership of %s released by %s (epoch %d)", self.prefix, self.holder, epoch)
