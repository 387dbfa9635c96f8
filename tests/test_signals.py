"""SignalLatch: a stop signal never hangs a main thread that waits on the latch.

The hang it guards against: a handler that calls ``Event.set`` runs on the main thread while that
thread, inside ``Event.wait`` on the same event, holds the event's lock; ``set`` then waits for
that lock forever. Before the fix, a child that spins on ``latch.event.wait(0)`` hung within the
first few of these signals (3 runs of 300: at rounds 1, 1 and 112); this test sends 300.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import mqtt_tasks
from mqtt_tasks.signals import SignalLatch

ROOT = Path(mqtt_tasks.__file__).resolve().parent.parent  # the code under test, wherever it is
ROUNDS = 300
ROUND_DEADLINE_S = 5.0

# Each round: a fresh latch, "ready N", then the main thread waits on the latch's event (without a
# timeout's sleep, or with a tiny one) until the parent's signal sets it; "stopped N SIGNAME".
WAITER_SCRIPT = """
import sys
import mqtt_tasks
from mqtt_tasks.signals import SignalLatch
for n in range(int(sys.argv[1])):
    with SignalLatch() as latch:
        print("ready", n, flush=True)
        while not latch.event.wait(0 if n % 2 else 0.0002):
            pass
        print("stopped", n, latch.signame, flush=True)
"""


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    """The child's output lines, read on a thread so that each can be waited for with a deadline."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.strip())

    threading.Thread(target=read, name="test-signals-reader", daemon=True).start()
    return lines


def _next(lines: queue.Queue[str], n: int) -> str:
    try:
        return lines.get(timeout=ROUND_DEADLINE_S)
    except queue.Empty:
        raise AssertionError(f"round {n}: the waiter does not answer (its main thread hangs in its signal "
                             "handler)") from None


def test_a_main_thread_waiting_on_the_latch_never_hangs_on_a_stop_signal() -> None:
    proc = subprocess.Popen([sys.executable, "-c", WAITER_SCRIPT, str(ROUNDS)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = _lines(proc)
    try:
        for n in range(ROUNDS):
            assert _next(lines, n) == f"ready {n}"
            sig = signal.SIGTERM if n % 3 else signal.SIGINT
            proc.send_signal(sig)
            assert _next(lines, n) == f"stopped {n} {sig.name}"
        assert proc.wait(ROUND_DEADLINE_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_latch_restores_the_handlers_and_its_relay_ends() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    hurried = threading.Event()
    with SignalLatch(on_hurry=hurried.set) as latch:
        relays = [t for t in threading.enumerate() if t.name == "mqtt-tasks-signals"]
        assert relays
        os.kill(os.getpid(), signal.SIGTERM)
        assert latch.event.wait(ROUND_DEADLINE_S) and latch.signame == "SIGTERM"
        os.kill(os.getpid(), signal.SIGTERM)  # changes nothing
        os.kill(os.getpid(), signal.SIGINT)  # cuts the grace short
        assert hurried.wait(ROUND_DEADLINE_S)
    assert {sig: signal.getsignal(sig) for sig in before} == before
    assert not any(t.is_alive() for t in relays)  # joined on exit
