"""SignalLatch: a stop signal never hangs a main thread that waits on the latch.

Second hang: CPython runs a Python signal handler only when the main thread checks for signals, so
a signal whose C-level delivery does not interrupt the main thread's blocking wait (it came just
before the wait began, or the kernel gave it to another thread) used to be noticed only when that
wait ended by itself: ``submit --wait`` sat out its 30 s result timeout after Ctrl-C.
``test_a_signal_the_main_thread_never_sees_still_stops_the_latch`` forces the second case: the main
thread blocks the stop signals, so only another thread can take them.

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
from mqtt_tasks.signals import EXIT_FORCED, SignalLatch
from tests.brokers import wait_until

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


# The main thread blocks the stop signals (a pending signal then goes to another thread, as one
# that arrives just before a wait begins is never seen by that wait) and waits without a timeout.
BLIND_WAITER_SCRIPT = """
import signal, sys
from mqtt_tasks.signals import SignalLatch
with SignalLatch() as latch:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    print("ready", flush=True)
    latch.event.wait()
    print("stopped", latch.signame, flush=True)
    if sys.argv[1] == "twice":
        print("waiting again", flush=True)
        latch.event.clear()
        latch.event.wait()
"""


def _main_thread_blocked(pid: int) -> bool:
    """The process's main thread sleeps (in its wait: it does nothing else after its last line)."""
    stat = Path(f"/proc/{pid}/task/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "S"


def test_a_signal_the_main_thread_never_sees_still_stops_the_latch() -> None:
    proc = subprocess.Popen([sys.executable, "-c", BLIND_WAITER_SCRIPT, "once"], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = _lines(proc)
    try:
        assert _next(lines, 0) == "ready"
        wait_until(lambda: _main_thread_blocked(proc.pid), ROUND_DEADLINE_S)  # no bytecode left to notice it
        proc.send_signal(signal.SIGTERM)
        assert _next(lines, 0) == "stopped SIGTERM"
        assert proc.wait(ROUND_DEADLINE_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_second_sigint_exits_at_once_whatever_the_main_thread_does() -> None:
    proc = subprocess.Popen([sys.executable, "-c", BLIND_WAITER_SCRIPT, "twice"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = _lines(proc)
    try:
        assert _next(lines, 0) == "ready"
        proc.send_signal(signal.SIGINT)
        assert _next(lines, 0) == "stopped SIGINT"
        assert _next(lines, 0) == "waiting again"  # blocked for good: only the relay can end it
        wait_until(lambda: _main_thread_blocked(proc.pid), ROUND_DEADLINE_S)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(ROUND_DEADLINE_S) == EXIT_FORCED
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
