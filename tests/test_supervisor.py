"""The supervisor: its restart policy with a fake clock, and `--processes N` as a real subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from mqtt_tasks import TaskApp
from mqtt_tasks.cli import RET_CONNECT, RET_USAGE
from mqtt_tasks.signals import EXIT_FORCED
from mqtt_tasks.supervisor import RestartPolicy, Supervisor, describe_exit
from tests.brokers import free_port, wait_until
from tests.test_cli import Monitor, Proc, worker_argv

ROOT = Path(__file__).resolve().parent.parent


# -- the policy (pure) ---------------------------------------------------------------------
def test_backoff_doubles_per_recent_crash_is_capped_and_jittered() -> None:
    policy = RestartPolicy(window_s=60, base_delay=0.5, max_delay=3)
    low, high = (lambda: 0.0), (lambda: 1.0)
    assert [policy.delay([100.0], now=100.0, rng=r) for r in (low, high)] == [0.25, 0.5]
    assert [policy.delay([99.0, 100.0], now=100.0, rng=r) for r in (low, high)] == [0.5, 1.0]
    assert policy.delay([98.0, 99.0, 100.0], now=100.0, rng=high) == 2.0
    assert [policy.delay([float(t) for t in range(80, 101)], now=100.0, rng=r) for r in (low, high)] == [1.5, 3.0]


def test_never_gives_up_and_forgives_old_crashes() -> None:
    policy = RestartPolicy(window_s=10, base_delay=0.5, max_delay=8, loop_after=3)
    crashes = [float(t) for t in range(1000)]  # a crash a second for 1000 s
    assert policy.delay(crashes, now=999.0, rng=lambda: 1.0) == 8.0 and policy.looping(crashes, now=999.0)
    assert policy.delay([1.0, 2.0, 30.0], now=30.0, rng=lambda: 1.0) == policy.base_delay  # old ones forgiven
    assert not policy.looping([1.0, 2.0, 30.0], now=30.0)


def test_describe_exit() -> None:
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(3) == "exited with code 3"


# -- signals -----------------------------------------------------------------------------------
LATCH_SCRIPT = """
import os, signal, sys, threading
from mqtt_tasks.signals import SignalLatch
hurried = threading.Event()
def say(text):
    print(text, flush=True)
with SignalLatch(on_hurry=hurried.set) as latch:
    for _ in range(3):  # systemd's SIGTERM, the supervisor's forwarded one, a second `systemctl stop`
        os.kill(os.getpid(), signal.SIGTERM)
    say(f"stopping={latch.event.wait(5)} hurried={hurried.is_set()}")
    os.kill(os.getpid(), signal.SIGINT)
    say(f"hurried={hurried.wait(5)}")
    os.kill(os.getpid(), signal.SIGINT)
    threading.Event().wait(30)  # the relay thread exits the process, whatever the main thread waits on
    say("still running")
"""


def test_a_repeated_sigterm_keeps_the_grace_and_a_sigint_while_stopping_cuts_it_short() -> None:
    """SIGTERM means "stop gracefully" however often it comes (systemd signals the supervisor and
    every child at once, so each child gets it twice); Ctrl-C during the stop hands back now, the
    next one exits at once."""
    done = subprocess.run([sys.executable, "-c", LATCH_SCRIPT], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.splitlines() == ["stopping=True hurried=False", "hurried=True"], done.stderr
    assert done.returncode == EXIT_FORCED


# -- the supervisor with stand-in children ------------------------------------------------------
def _exits_with(code: int) -> Any:
    return lambda index, worker_id: [sys.executable, "-c", f"import sys; sys.exit({code})"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_child_that_keeps_crashing_is_restarted_with_backoff_and_never_given_up(caplog: Any) -> None:
    """Sixty crashes in a row (a poison task each time, say): restarted every time, the delay
    growing to its cap, the crash loop logged at error level; old crashes forgiven later."""
    clock = FakeClock()
    policy = RestartPolicy(window_s=60, base_delay=0.5, max_delay=4, loop_after=5)
    supervisor = Supervisor(_exits_with(1), ["a"], policy=policy, clock=clock, rng=lambda: 1.0).start()
    child = supervisor.children[0]
    delays = []
    try:
        for _ in range(12):
            assert child.proc is not None
            child.proc.wait(15)
            assert supervisor.check() is None and child.proc is None and child.restart_at is not None
            delays.append(child.restart_at - clock.now)
            clock.now = child.restart_at
            assert supervisor.check() is None and child.proc is not None  # restarted when due
        assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]
        assert child.restarts == 12
        assert "crash loop" in caplog.text and "restarting it in 4.0s" in caplog.text
        clock.now += 120.0  # a quiet spell
        child.proc.wait(15)
        supervisor.check()
        assert child.restart_at is not None and child.restart_at - clock.now == 0.5
    finally:
        supervisor.stop()


def test_a_usage_error_is_never_restarted() -> None:
    supervisor = Supervisor(_exits_with(RET_USAGE), ["a"]).start()
    try:
        reason = wait_until(supervisor.check, timeout=15)
    finally:
        supervisor.stop()
    assert "not restarting" in reason
    assert supervisor.children[0].restarts == 0


# -- mqtt-worker --processes N -------------------------------------------------------------------
def _online(monitor: Monitor, worker_id: str, not_pid: int | None = None) -> Any:
    state = monitor.state(worker_id)
    return state is not None and state.state == "online" and state.pid != not_pid and state


def test_processes_share_the_queue_and_a_killed_child_is_restarted(mosquitto: Any, prefix: str) -> None:
    base = f"p-{prefix}"
    ids = [f"{base}-0", f"{base}-1"]
    with Monitor(mosquitto.url, prefix) as monitor, TaskApp(mosquitto.url, prefix=prefix) as app:
        proc = Proc(worker_argv("examples.tasks:app", "--broker", mosquitto.url, "--prefix", prefix,
                                "--worker-id", base, "--processes", "2", "--log-level", "warning"))
        try:
            proc.wait_line("supervisor")
            first = {wid: wait_until(lambda wid=wid: _online(monitor, wid), timeout=15) for wid in ids}
            assert len({s.pid for s in first.values()} | {proc.popen.pid}) == 3  # two children, not itself
            handles = [app.submit("add", i, 1) for i in range(20)]
            assert [h.result(timeout=10) for h in handles] == [i + 1 for i in range(20)]
            assert {h.status().worker for h in handles} == set(ids)  # both children took tasks

            os.kill(first[ids[0]].pid, signal.SIGKILL)
            restarted = wait_until(lambda: _online(monitor, ids[0], not_pid=first[ids[0]].pid), timeout=15,
                                   message="the killed child was not restarted")
            assert restarted.pid != first[ids[0]].pid
            assert app.submit("add", 40, 2).result(timeout=10) == 42

            code, stderr = proc.stop(signal.SIGTERM)
            assert code == 0, stderr
            assert "killed by SIGKILL; restarting" in stderr
            for wid in ids:
                wait_until(lambda wid=wid: (s := monitor.state(wid)) is not None and s.state == "offline")
        finally:
            if proc.popen.poll() is None:
                proc.stop(signal.SIGKILL)


def test_processes_with_a_bad_module_fail_before_spawning(prefix: str) -> None:
    proc = Proc(worker_argv("no_such_module_xyz:app", "--processes", "2"))
    code = proc.popen.wait(30)
    _, stderr = proc.stop()
    assert code == RET_USAGE
    assert stderr.strip().splitlines() == [
        "Error: cannot import 'no_such_module_xyz': no module named 'no_such_module_xyz' "
        "(run from the directory that contains it, or set PYTHONPATH)"]


def test_processes_with_an_unreachable_broker_fail_fast() -> None:
    proc = Proc(worker_argv("examples.tasks:app", "--broker", f"mqtt://127.0.0.1:{free_port()}",
                            "--processes", "2", "--log-level", "error"))
    code = proc.popen.wait(30)
    _, stderr = proc.stop()
    assert code == RET_CONNECT, stderr
    assert len(stderr.strip().splitlines()) == 1 and "cannot reach the MQTT broker" in stderr
    assert proc.stdout == []  # no supervisor, no children
