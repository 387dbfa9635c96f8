"""Stop signals, caught without a lock and without the main thread: ``SignalLatch``.

Two ways a signal handler could leave a process that never exits, both seen here:

- A Python signal handler runs on the main thread, between two bytecodes of whatever that thread
  is doing. If the main thread is inside ``Event.wait`` on the very event the handler sets, it may
  hold the event's lock at that moment (``Event.wait`` takes it around each wait), and
  ``Event.set`` in the handler then blocks forever on a lock its own thread holds: a coordinator
  that never exited after SIGTERM (tests/test_signals.py reproduces it within a few hundred
  signals). The same holds for any lock a handler takes.
- CPython runs the Python handler only when the main thread next checks for signals: between
  bytecodes, or when the signal interrupts the system call it is blocked in. A signal that arrives
  after the main thread's last check and before it blocks in a lock's wait (``Event.wait``,
  ``Future.result``: it may be handing the GIL over right then, or descheduled on a loaded
  machine), or that the kernel hands to another thread, interrupts nothing: the handler runs when
  the wait ends by itself, after its timeout or never. ``mqtt-tasks submit --wait`` once went on
  waiting 30 s after Ctrl-C (its result timeout); a gdb breakpoint on the main thread's
  ``PyThread_acquire_lock_timed`` that delivers SIGINT there reproduces it every time.

So nothing here depends on the main thread. The latch registers a pipe with
``signal.set_wakeup_fd``: CPython's C-level handler writes each signal's number to it the moment
the signal arrives, on whatever thread. A relay thread reads the pipe and decides what the signal
means (first stop, a repeat, cut the grace short, exit now), sets the event, logs, calls
``on_hurry``, as an ordinary thread; only it writes the latch's state. The Python-level handler
does nothing (it only replaces the default ``KeyboardInterrupt``), so the main thread may wait on
``event`` any way it likes, and no exception ever lands in the middle of its work.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)

EXIT_FORCED = 130  # a SIGINT after the one that cut the grace short
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class SignalLatch:
    """The first SIGTERM/SIGINT sets ``event``. Later SIGTERMs change nothing; a SIGINT after that
    calls ``on_hurry`` (cut the grace short), the next exits at once with ``EXIT_FORCED`` (without
    ``on_hurry``: the second SIGINT does).

    A context manager for the main thread: it installs the handlers, the wakeup pipe and the relay
    thread on entry and restores the previous ones on exit. ``event`` is set by the relay thread,
    after ``signame``, never by a handler, so waiting on it from the main thread is safe (see the
    module docstring); its owner may also set it to wake itself, and tell the two apart by ``signame``."""

    def __init__(self, on_hurry: Callable[[], None] | None = None) -> None:
        self.event = threading.Event()
        self.signame = ""
        self.on_hurry = on_hurry
        self._hurried = False
        self._previous: dict[int, object] = {}
        self._previous_wakeup = -1
        self._pipe: tuple[int, int] | None = None
        self._relay: threading.Thread | None = None

    def __enter__(self) -> SignalLatch:
        self._pipe = os.pipe()
        os.set_blocking(self._pipe[1], False)  # set_wakeup_fd wants it; a full pipe drops a byte, never blocks
        self._relay = threading.Thread(target=self._relay_signals, args=(self._pipe[0],),
                                       name="mqtt-tasks-signals", daemon=True)
        self._relay.start()
        self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        self._previous_wakeup = signal.set_wakeup_fd(self._pipe[1], warn_on_full_buffer=False)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.set_wakeup_fd(self._previous_wakeup)  # before the pipe closes: its number may be reused
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        if self._pipe is not None:
            os.close(self._pipe[1])  # the relay reads end-of-file, finishes what it read, and ends
            if self._relay is not None:
                self._relay.join()
            os.close(self._pipe[0])
            self._pipe = self._relay = None

    # -- on the main thread, whenever it gets to it: nothing to do -------------------------------
    def _handle(self, signum: int, frame: FrameType | None) -> None:
        """The relay has it already (the wakeup pipe); this only keeps SIGINT from raising KeyboardInterrupt."""

    # -- on the relay thread ------------------------------------------------------------------
    def _relay_signals(self, read_fd: int) -> None:
        while chunk := os.read(read_fd, 64):
            for signum in chunk:  # one byte per signal, written by CPython's C-level handler
                if signum in STOP_SIGNALS:
                    self._act(signal.Signals(signum))

    def _act(self, sig: signal.Signals) -> None:
        if not self.signame:
            self.signame = sig.name
            self.event.set()
        elif sig != signal.SIGINT:
            log.info("%s again: already stopping, the grace period still holds", sig.name)
        elif not self._hurried and self.on_hurry is not None:
            self._hurried = True
            log.warning("SIGINT while stopping: handing back what still runs now (another exits at once)")
            try:
                self.on_hurry()
            except Exception:  # the relay must live on: the next SIGINT still exits
                log.exception("cutting the grace short failed")
        else:
            log.warning("SIGINT again: exiting at once")
            os._exit(EXIT_FORCED)
