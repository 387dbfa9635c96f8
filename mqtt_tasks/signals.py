"""Stop signals, caught without a lock: ``SignalLatch``.

A Python signal handler runs on the main thread, between two bytecodes of whatever that thread is
doing. If the main thread is inside ``Event.wait`` on the very event the handler sets, it may hold
the event's lock at that moment (``Event.wait`` takes it around each wait), and ``Event.set`` in
the handler then blocks forever on a lock its own thread holds: a process that never exits after
SIGTERM (seen once in a coordinator; tests/test_signals.py reproduces it within a few hundred
signals). The same holds for any lock a handler takes (a worker's ``hurry``, a queue, ...).

So the handler here takes no lock: it decides what the signal means from plain attributes only
the main thread writes, and writes two bytes (what to do, which signal) to a pipe. A relay thread
reads the pipe and does the rest (sets the event, logs, calls ``on_hurry``) as an ordinary thread,
so the main thread may wait on ``event`` any way it likes. The one exception is the last resort:
a SIGINT after the one that cut the grace short exits at once (``os._exit``) from the handler.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)

EXIT_FORCED = 130  # a SIGINT after the one that cut the grace short
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

# What the handler tells the relay thread (the first of the two bytes it writes).
_STOP, _REPEAT, _HURRY = 1, 2, 3


class SignalLatch:
    """The first SIGTERM/SIGINT sets ``event``. Later SIGTERMs change nothing; a SIGINT after that
    calls ``on_hurry`` (cut the grace short), the next exits at once with ``EXIT_FORCED``.

    A context manager for the main thread: it installs the handlers and the relay thread on entry
    and restores the previous handlers on exit. ``event`` is set by the relay thread, never by the
    handler, so waiting on it from the main thread is safe (see the module docstring)."""

    def __init__(self, on_hurry: Callable[[], None] | None = None) -> None:
        self.event = threading.Event()
        self.signame = ""
        self.on_hurry = on_hurry
        self._hurried = False
        self._previous: dict[int, object] = {}
        self._pipe: tuple[int, int] | None = None
        self._relay: threading.Thread | None = None

    def __enter__(self) -> SignalLatch:
        self._pipe = os.pipe()
        self._relay = threading.Thread(target=self._relay_signals, args=(self._pipe[0],),
                                       name="mqtt-tasks-signals", daemon=True)
        self._relay.start()
        self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        if self._pipe is not None:
            os.close(self._pipe[1])  # the relay reads end-of-file, finishes what it read, and ends
            if self._relay is not None:
                self._relay.join()
            os.close(self._pipe[0])
            self._pipe = self._relay = None

    # -- on the main thread, inside the signal handler: no locks -----------------------------
    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.signame:
            self.signame = signal.Signals(signum).name
            action = _STOP
        elif signum != signal.SIGINT:
            action = _REPEAT
        elif not self._hurried and self.on_hurry is not None:
            self._hurried = True
            action = _HURRY
        else:
            log.warning("SIGINT again: exiting without waiting for running tasks")
            os._exit(EXIT_FORCED)
        if self._pipe is not None:
            with contextlib.suppress(OSError):  # the latch is closing: nobody waits for it any more
                os.write(self._pipe[1], bytes((action, signum)))

    # -- on the relay thread ------------------------------------------------------------------
    def _relay_signals(self, read_fd: int) -> None:
        pending = b""
        while chunk := os.read(read_fd, 64):
            pending += chunk
            while len(pending) >= 2:
                self._act(pending[0], pending[1])
                pending = pending[2:]

    def _act(self, action: int, signum: int) -> None:
        name = signal.Signals(signum).name
        if action == _STOP:
            self.event.set()
        elif action == _REPEAT:
            log.info("%s again: already stopping, the grace period still holds", name)
        elif self.on_hurry is not None:
            log.warning("SIGINT while stopping: handing back what still runs now (another exits at once)")
            try:
                self.on_hurry()
            except Exception:  # the relay must live on: the next SIGINT still exits
                log.exception("cutting the grace short failed")
