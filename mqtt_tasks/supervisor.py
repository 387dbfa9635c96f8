"""Running workers in the foreground: one in this process, or N child processes.

``serve(worker)`` starts one ``Worker``, blocks until SIGTERM or SIGINT, then stops it
gracefully: running tasks finish within the worker's grace period; what still runs then is
handed back (the coordinator dispatches it again) and the process exits at once, so that a
task thread Python cannot stop dies with it instead of finishing a task already handed on.

Signals, decided so that the grace holds however the stop arrives (docs/operations.md):

- SIGTERM means "stop gracefully", however often it comes. systemd's default stop
  (``KillMode=control-group``) sends it to the supervisor *and* to every child at once, so a
  child gets it twice (from systemd, and forwarded); an operator may repeat ``systemctl stop``.
  A repeated SIGTERM is logged and changes nothing: the escalation of SIGTERM is SIGKILL
  (systemd's, after ``TimeoutStopSec``), not another SIGTERM.
- SIGINT is a person at a terminal: the first stops gracefully; one during the stop cuts the
  grace short (what still runs is handed back now; a supervisor forwards it to its children);
  the next exits at once with ``EXIT_FORCED``, and the broker publishes the Last Will (``offline``).

``Supervisor`` keeps N worker processes running (``mqtt-worker --processes N``). Each child is
its own MQTT client in the same share group, started with ``start_new_session`` so that a
Ctrl-C in the terminal reaches only the supervisor, which forwards SIGTERM to every child and
waits for them to drain. A child that exits on its own is restarted after a backoff that
``RestartPolicy`` (pure, tested with a fake clock) decides: exponential, jittered, capped, and
never giving up. A child that exits with ``EXIT_USAGE`` (bad module, bad option) is never
restarted: restarting cannot fix it.

Children watch ``MQTT_TASKS_SUPERVISOR_PID``: when the supervisor disappears (``kill -9``),
they drain and exit instead of running on as orphans. Once the supervisor is stopping it never
restarts a child: a child that exits then (its grace over, or stopped by systemd directly) is done.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

from .signals import SignalLatch
from .worker import Worker

log = logging.getLogger(__name__)

ENV_SUPERVISOR_PID = "MQTT_TASKS_SUPERVISOR_PID"
EXIT_USAGE = 2  # a child exiting with this code is misconfigured: never restarted
_POLL_S = 0.1


# -- one worker, in the foreground ---------------------------------------------------------
def _parent_gone(parent_pid: int | None) -> bool:
    return parent_pid is not None and os.getppid() != parent_pid


def serve(worker: Worker, *, on_ready: Callable[[Worker], None] | None = None) -> None:
    """Start ``worker``, block until SIGTERM/SIGINT (or the supervisor's death), stop it gracefully.

    Call from the main thread. Raises what ``Worker.start`` raises (``ConnectError``, ...).
    """
    parent = os.environ.get(ENV_SUPERVISOR_PID)
    parent_pid = int(parent) if parent and parent.isdigit() else None
    with SignalLatch(on_hurry=worker.hurry) as latch:
        worker.start()
        if on_ready is not None:
            on_ready(worker)
        while not latch.event.wait(1.0 if parent_pid else 60.0):
            if _parent_gone(parent_pid):
                log.warning("worker %s: supervisor %s is gone; stopping", worker.worker_id, parent_pid)
                break
        log.info("worker %s: %s, stopping (grace %.1fs)", worker.worker_id, latch.signame or "orphaned",
                 worker.grace)
        worker.stop()
        if worker.stale_runs:  # handed back, still running in threads Python cannot stop
            log.warning("worker %s: exiting now; the %d task(s) it handed back end with the process",
                        worker.worker_id, worker.stale_runs)
            exit_now(0)


def exit_now(code: int) -> NoReturn:
    """Flush the log and standard streams, then ``os._exit``: the interpreter's own exit would
    wait for every pool thread, so a task body handed back would run on, and finish."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


# -- restart policy (pure) ---------------------------------------------------------------
@dataclass(frozen=True)
class RestartPolicy:
    """When to restart a crashed child: never give up, back off.

    The delay is exponential in n, the child's crashes within ``window_s`` (so a quiet spell
    forgives old ones): a ceiling of ``base_delay * 2**(n-1)`` capped at ``max_delay``, of which
    half is fixed and half random (equal jitter, so children that crash together do not restart
    together). A crash that a task causes (a segfault in a C extension, ``os._exit``, the OOM
    killer) says nothing about the next task, and the coordinator isolates and dead-letters the
    task that keeps doing it (docs/coordinator.md, "Poison tasks"): giving up would stop the
    whole fleet for one bad task. The cap keeps a crash loop at one start per ``max_delay`` at
    most; from ``loop_after`` crashes within the window the supervisor says so at error level.
    """

    window_s: float = 60.0
    base_delay: float = 0.5
    max_delay: float = 10.0
    loop_after: int = 5

    def recent(self, crashes: Sequence[float], now: float) -> list[float]:
        return [t for t in crashes if now - t <= self.window_s]

    def ceiling(self, crashes: Sequence[float], now: float) -> float:
        count = len(self.recent(crashes, now))
        return min(self.max_delay, self.base_delay * 2.0 ** max(count - 1, 0))

    def delay(self, crashes: Sequence[float], now: float, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait before restarting a child with these crash times (the last one now)."""
        ceiling = self.ceiling(crashes, now)
        return ceiling / 2 + rng() * ceiling / 2

    def looping(self, crashes: Sequence[float], now: float) -> bool:
        return len(self.recent(crashes, now)) >= self.loop_after


# -- N children ----------------------------------------------------------------------------
@dataclass
class Child:
    """One slot of the supervisor: the process filling it now, and its crash history."""

    index: int
    worker_id: str
    proc: subprocess.Popen[bytes] | None = None
    crashes: list[float] = field(default_factory=list)
    restart_at: float | None = None
    restarts: int = 0


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor:
    """Keeps ``count`` worker processes running. ``command(index, worker_id)`` builds a child's argv."""

    def __init__(
        self,
        command: Callable[[int, str], list[str]],
        worker_ids: Sequence[str],
        *,
        policy: RestartPolicy | None = None,
        env: Mapping[str, str] | None = None,
        stop_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.command = command
        self.children = [Child(i, wid) for i, wid in enumerate(worker_ids)]
        self.policy = policy or RestartPolicy()
        self.env = dict(env or {})
        self.stop_timeout = stop_timeout
        self.clock = clock
        self.rng = rng
        self.failure: str | None = None

    def start(self) -> Supervisor:
        for child in self.children:
            self._spawn(child)
        return self

    def _spawn(self, child: Child) -> None:
        env = {**os.environ, **self.env, ENV_SUPERVISOR_PID: str(os.getpid())}
        child.proc = subprocess.Popen(self.command(child.index, child.worker_id), env=env,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        child.restart_at = None
        log.info("supervisor: started worker %s (pid %d)", child.worker_id, child.proc.pid)

    def check(self) -> str | None:
        """One step: reap exited children and restart those that are due.

        Returns None while all is well, else why the supervisor gives up.
        """
        now = self.clock()
        for child in self.children:
            if child.proc is not None and (code := child.proc.poll()) is not None:
                child.proc = None
                reason = self._on_exit(child, code, now)
                if reason:
                    return reason
            if child.proc is None and child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                self._spawn(child)
        return None

    def _on_exit(self, child: Child, code: int, now: float) -> str | None:
        how = describe_exit(code)
        if code == EXIT_USAGE:
            return f"worker {child.worker_id} {how} (a usage or configuration error); not restarting it"
        child.crashes = [*self.policy.recent(child.crashes, now), now]
        delay = self.policy.delay(child.crashes, now, self.rng)
        count, window = len(child.crashes), self.policy.window_s
        if self.policy.looping(child.crashes, now):
            log.error("supervisor: worker %s %s: %d crashes within %.0fs, a crash loop; restarting it in %.1fs "
                      "(backoff capped at %.0fs; a task that keeps killing it ends dead at the coordinator)",
                      child.worker_id, how, count, window, delay, self.policy.max_delay)
        else:
            log.warning("supervisor: worker %s %s; restarting it in %.1fs (%d crash%s within %.0fs)",
                        child.worker_id, how, delay, count, "" if count == 1 else "es", window)
        child.restart_at = now + delay
        return None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Forward ``sig`` to every child, wait for them (bounded), kill what is left."""
        procs = [c.proc for c in self.children if c.proc is not None]
        for proc in procs:
            _send(proc, sig)
        deadline = time.monotonic() + self.stop_timeout
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("supervisor: worker pid %d did not stop within %.0fs; killing it",
                            proc.pid, self.stop_timeout)
                proc.kill()
                proc.wait()
        for child in self.children:
            child.proc = None
            child.restart_at = None
        log.info("supervisor: %d worker(s) stopped", len(procs))

    def hurry(self) -> None:
        """Cut the children's grace short: forward SIGINT, which a stopping worker takes as that."""
        for child in self.children:
            if child.proc is not None:
                _send(child.proc, signal.SIGINT)

    def run(self) -> str | None:
        """Start the children and keep them running until SIGTERM/SIGINT.

        Returns None after a clean stop, else why it gave up (the other children are stopped
        gracefully first). Call from the main thread.
        """
        with SignalLatch(on_hurry=self.hurry) as latch:
            self.start()
            while not latch.event.wait(_POLL_S):
                self.failure = self.check()
                if self.failure:
                    log.error("supervisor: %s", self.failure)
                    break
            else:
                log.info("supervisor: %s, stopping %d worker(s)", latch.signame, len(self.children))
            self.stop()
        return self.failure


def _send(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        log.debug("worker pid %d already gone", proc.pid)
