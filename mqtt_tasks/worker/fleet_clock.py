"""The fleet's clock: the time a worker judges an absolute ``expires_at`` by. Pure: the clocks it
reads are injected, so it is tested with fake ones (tests/test_worker_slots.py).

Facts it is built on:

- Devices without NTP are normal here: a worker's wall clock can be minutes off (issue 13: one
  90 s fast expired tasks with 60 s left, one 90 s slow started tasks already expired). An
  absolute ``expires_at`` means something only against one clock for the whole fleet, and that
  clock is the coordinator's: it runs on a server (keep NTP there), and it already judges by it
  the tasks it holds (its backlog, its retries). docs/coordinator.md, "Where time is judged".
- The coordinator's presence on ``P/coordinator`` carries its ``ts``. A copy that arrives with the
  retain flag clear was published just now (on the coordinator's (re)connect, when it hears a
  worker that was not live, and every ``PRESENCE_EVERY`` seconds): ``ts`` minus the moment it
  arrived is one *reading* of the coordinator's clock, low by the message's delay. A retained
  copy may be hours old: it is no reading.
- The delay only ever makes a reading low, so the highest of the recent readings is the least
  delayed one (NTP's minimum-delay filter). A coordinator with another client id or pid may have
  another clock: its readings start afresh.
- Readings are kept against ``time.monotonic()``: once it has one, a worker never reads its own
  wall clock for expiry, so a step of that clock changes nothing.
- Without a reading the worker's own wall clock is used: with no coordinator online, and with one
  that sends no fresh presence (an older version) once ``wait`` seconds have passed. Within that
  wait, a task with an absolute expiry is handed to the coordinator (``now_or_none`` is None),
  which judges it by the fleet's clock in its backlog.
- Relative expiry (MQTT 5 Message Expiry Interval) needs no common clock: the broker counts it
  down, and the worker adds what is left on delivery to its ``now``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable

READINGS = 8
"""Recent readings kept; the highest (least delayed) one sets the offset."""
WAIT_FOR_READING = 5.0
"""Seconds after a coordinator comes online within which a reading of its clock is expected (it
sends one when it first hears this worker's heartbeat, a few milliseconds after connecting)."""


class FleetClock:
    """The coordinator's clock as this worker reads it. Not locked: ``offset`` is one attribute,
    set by the network thread and read by any."""

    def __init__(self, wall: Callable[[], float] = time.time, mono: Callable[[], float] = time.monotonic,
                 wait: float = WAIT_FOR_READING) -> None:
        self._wall = wall
        self._mono = mono
        self._wait = wait
        self._readings: deque[float] = deque(maxlen=READINGS)
        self._source: Hashable = None
        self._awaiting_until = 0.0  # monotonic; a reading is expected until then
        self.offset: float | None = None  # the fleet's time minus time.monotonic()

    def observe(self, ts: float, source: Hashable, received: float) -> bool:
        """A presence published live at the coordinator's time ``ts`` arrived at monotonic time
        ``received``. True when it is the first reading from ``source``."""
        first = source != self._source or self.offset is None
        if source != self._source:
            self._readings.clear()
            self._source = source
        self._readings.append(ts - received)
        self.offset = max(self._readings)
        return first

    def expect(self) -> None:
        """A coordinator came online: until it sends a reading (at most ``wait`` s), absolute
        expiries are its to judge. Readings from an earlier coordinator are kept meanwhile."""
        if self.offset is None:
            self._awaiting_until = self._mono() + self._wait

    def give_up_waiting(self) -> None:
        """The coordinator went offline: nobody to hand a task to, the worker judges alone."""
        self._awaiting_until = 0.0

    def now(self) -> float:
        """The fleet's time (epoch seconds): the coordinator's clock if read, else this host's."""
        offset = self.offset
        return self._wall() if offset is None else self._mono() + offset

    def now_or_none(self) -> float | None:
        """``now``, or None while a reading of the coordinator's clock is awaited."""
        offset = self.offset
        if offset is not None:
            return self._mono() + offset
        if self._awaiting_until and self._mono() < self._awaiting_until:
            return None
        return self._wall()

    def skew(self) -> float | None:
        """How far this host's wall clock is ahead of the fleet's (None: not read yet)."""
        return None if self.offset is None else self._wall() - self.now()
