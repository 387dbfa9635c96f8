"""The worker's counters (``Worker.stats``), safe to bump from any thread.

They are incremented by the network thread (``started``, ``deferred``, ``rejected``, ``dropped``,
under the dispatch lock), by task threads (``succeeded``, ``failed``, under no lock of the
worker's), by ``stop`` (``handed_back``: still running when the grace ran out), by cancels
(``cancelled``; ``abandoned``: a cancelled body still running after the cancel grace), by intake
(``forwarded``: to its routed topic, docs/routing.md) and read from
anywhere. A ``+=`` on a shared dict from several threads can lose counts;
one lock of their own, held for one addition, costs about a tenth of a microsecond per count.
"""

from __future__ import annotations

import threading

NAMES = ("started", "succeeded", "failed", "deferred", "rejected", "dropped", "handed_back", "cancelled",
         "abandoned", "forwarded")


class Counters:
    __slots__ = ("_lock", "_counts")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(NAMES, 0)

    def add(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def read(self) -> dict[str, int]:
        """A consistent copy of every counter."""
        with self._lock:
            return dict(self._counts)
