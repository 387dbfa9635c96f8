"""Fault injection: the promise under faults, with real processes and three independent counts.

With a coordinator, every task ends in exactly one terminal state, none is lost, and a task on
a live worker is never run twice (README.md, docs/operations.md). Each scenario starts a private
Mosquitto from the repository's mosquitto.conf, the installed ``mqtt-tasks coordinator`` and
``mqtt-worker`` processes and a producer, injects one fault, and counts what happened from the
status events on the wire, the ledger the task bodies wrote, and the coordinator's record. It
asserts none lost, one final state each, and duplicates only where the fault explains them.
The figures per scenario are in docs/operations.md ("Faults, measured").
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mqtt_tasks import Settings
from mqtt_tasks.coordinator import query_stats
from mqtt_tasks.transport import Connection, Message
from tests.brokers import MosquittoProcess, wait_until
from tests.faults.cluster import Cluster, Process, Verdict
from tests.faults.proxy import TcpProxy

pytestmark = pytest.mark.faults


@pytest.fixture
def cluster(mosquitto: MosquittoProcess, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(mosquitto, tmp_path)
    try:
        yield c
    finally:
        c.close()


def settle(cluster: Cluster, coordinator: Process, timeout: float = 60.0) -> Verdict:
    """Wait for every task's final event, stop the coordinator cleanly, and count three ways."""
    cluster.wait_finished(timeout=timeout)
    coordinator.signal(signal.SIGTERM)
    assert coordinator.reap() == 0, coordinator.text()[-2000:]
    verdict = cluster.verdict()
    print(verdict.summary())
    assert verdict.lost == [], f"{len(verdict.lost)} tasks lost"
    assert verdict.several_finals == [], f"{len(verdict.several_finals)} tasks ended twice"
    for ident in cluster.submitted:  # the coordinator's record agrees with the wire
        assert verdict.record.get(ident) == cluster.observer.finals(ident)[0]["state"], ident
    return verdict


def assert_ledger_agrees(cluster: Cluster, verdict: Verdict) -> None:
    """A task that ended ``succeeded`` ran to its end; one that ended ``expired`` never started."""
    started = {ident for ident, _ in cluster.ledger_lines("start")}
    for ident in cluster.submitted:
        state = cluster.observer.finals(ident)[0]["state"]
        if state == "succeeded":
            assert verdict.executions[ident] >= 1, f"{ident} succeeded but its body never finished"
        if state == "expired":
            assert ident not in started, f"{ident} was started, then recorded as expired"


# -- faults the promise already survived (kept, so it keeps surviving them) -------------------
def test_a_worker_killed_mid_run_loses_nothing(cluster: Cluster) -> None:
    coordinator = cluster.coordinator()
    victim = cluster.worker("w1")
    cluster.worker("w2")
    cluster.submit(40, 0.5)
    wait_until(lambda: cluster.started_by(victim) >= 2, 30, message="the victim never started a task")
    cluster.mark_fault()
    victim.kill()
    verdict = settle(cluster, coordinator)
    assert verdict.outcomes == {"succeeded": 40}
    assert verdict.duplicates == 0  # the killed worker finished none of the tasks it held


def test_a_partitioned_worker_that_keeps_running_is_presumed_dead_once(cluster: Cluster) -> None:
    coordinator = cluster.coordinator()
    link = TcpProxy(cluster.mosquitto.port)
    try:
        cut = cluster.worker("cut", url=link.url, concurrency=2)
        cluster.submit(2, 6.0)
        wait_until(lambda: cluster.started_by(cut) == 2, 30)
        cluster.mark_fault()
        link.partition()  # it keeps running both tasks, unheard, for longer than its lease
        cluster.worker("spare")
        cluster.wait_finished(timeout=60)
        link.heal()
    finally:
        link.close()
    verdict = settle(cluster, coordinator)
    assert verdict.outcomes == {"succeeded": 2}
    assert verdict.duplicates <= 2  # unheard past its lease it was presumed dead: the fault explains a re-run


def test_a_worker_frozen_by_sigstop_comes_back_without_duplicating_long_tasks(cluster: Cluster) -> None:
    coordinator = cluster.coordinator()
    frozen = cluster.worker("frozen", concurrency=2)
    cluster.submit(2, 3.0)
    wait_until(lambda: cluster.started_by(frozen) == 2, 30)
    cluster.mark_fault()
    frozen.signal(signal.SIGSTOP)
    cluster.worker("spare")
    wait_until(lambda: len(cluster.ledger_lines("start")) >= 4, 60, message="the frozen worker's tasks were "
               "never dispatched again")
    frozen.signal(signal.SIGCONT)
    verdict = settle(cluster, coordinator)
    assert verdict.outcomes == {"succeeded": 2}
    assert verdict.duplicates <= 2  # frozen past its lease, it was presumed dead


def test_the_coordinator_killed_and_restarted_mid_run_loses_nothing(cluster: Cluster) -> None:
    coordinator = cluster.coordinator()
    cluster.worker("w1")
    cluster.worker("w2")
    cluster.submit(200, 0.05)
    wait_until(lambda: len(cluster.ledger_lines("end")) >= 40, 30)
    cluster.mark_fault()
    coordinator.kill()
    coordinator = cluster.coordinator()
    verdict = settle(cluster, coordinator)
    assert verdict.outcomes == {"succeeded": 200}
    assert verdict.duplicates == 0


def test_a_clean_broker_restart_loses_nothing(cluster: Cluster) -> None:
    coordinator = cluster.coordinator()
    cluster.worker("w1")
    cluster.submit(200, 0.05)
    wait_until(lambda: len(cluster.ledger_lines("end")) >= 20, 30)
    cluster.mark_fault()
    cluster.mosquitto.restart()  # SIGTERM: Mosquitto saves its sessions first
    verdict = settle(cluster, coordinator, timeout=90)
    assert verdict.outcomes == {"succeeded": 200}


# -- faults that broke the promise (issue 13) ---------------------------------------------------
def test_expiry_cannot_race_a_start(cluster: Cluster) -> None:
    """Tasks started just in time are not recorded expired (and cancelled) before `started` arrives."""
    coordinator = cluster.coordinator()
    for name in ("w1", "w2"):  # each has read the fleet's clock: it judges, instead of deferring
        cluster.worker(name, concurrency=8).started("by the coordinator's clock")
    for _ in range(100):
        cluster.submit(1, 0.3, expires_at=time.time() + 0.05)
    verdict = settle(cluster, coordinator)
    assert_ledger_agrees(cluster, verdict)
    started = {i for i, _ in cluster.ledger_lines("start")}
    assert started, "no task started in time: the race was not run"
    cut_short = started - set(verdict.executions)
    assert cut_short == set(), f"{len(cut_short)} tasks were stopped mid-run"
    assert verdict.outcomes["succeeded"] == len(started)  # each one started in time ran to its end


@pytest.mark.parametrize("skew", [90.0, -90.0])
def test_a_worker_with_a_wrong_clock_judges_expiry_right(cluster: Cluster, skew: float) -> None:
    """Time is judged by the fleet's clock (the coordinator's), whatever the worker's own says.
    The expired tasks go first, to an idle worker, so that it is the worker that judges them (not
    the coordinator's timer while they wait in the worker's line)."""
    coordinator = cluster.coordinator()
    cluster.worker("skewed", env=cluster.env(clock_skew=skew))
    dead = cluster.submit(20, 0.05, expires_at=time.time() - 1)
    alive = cluster.submit(20, 0.05, expires_at=time.time() + 60)
    verdict = settle(cluster, coordinator)
    assert_ledger_agrees(cluster, verdict)
    assert {cluster.observer.finals(i)[0]["state"] for i in alive} == {"succeeded"}
    assert {cluster.observer.finals(i)[0]["state"] for i in dead} == {"expired"}
    started = {i for i, _ in cluster.ledger_lines("start")}
    assert started & set(dead) == set(), "a task already past its expiry was started"


def test_a_coordinator_with_a_fast_clock_gives_each_task_one_final_state(cluster: Cluster) -> None:
    """The coordinator's clock is the fleet's: 90 s fast, it makes tasks with 60 s left by the
    producer's clock already expired, for the workers too. Wrong, but consistently so: each task
    ends once, ``expired``, never started (docs/coordinator.md, "Where time is judged")."""
    coordinator = cluster.coordinator(env=cluster.env(clock_skew=90.0))
    cluster.worker("w1")
    cluster.submit(20, 0.2, expires_at=time.time() + 60)
    verdict = settle(cluster, coordinator)
    assert_ledger_agrees(cluster, verdict)
    assert verdict.outcomes == {"expired": 20} and cluster.ledger_lines("start") == []


@pytest.mark.timeout(300)
def test_poison_tasks_sink_only_themselves(cluster: Cluster) -> None:
    coordinator = cluster.coordinator()
    pool = cluster.worker("pool", "--processes", "2", concurrency=4)
    started = time.monotonic()
    cluster.mark_fault()  # the poison tasks go in from the start
    poison = []
    for how in ("exit", "segv", "kill"):  # one of each: every crash costs a supervisor back-off
        cluster.submit(50, 0.05)
        poison += cluster.submit(1, name="poison", how=how)
    settle(cluster, coordinator, timeout=240)
    print(f"settled in {time.monotonic() - started:.0f}s; worker crashes: {pool.text().count('restarting it in')}")
    jobs = set(cluster.submitted) - set(poison)
    assert {cluster.observer.finals(i)[0]["state"] for i in jobs} == {"succeeded"}
    assert {cluster.observer.finals(i)[0]["state"] for i in poison} == {"dead"}
    for ident in poison:  # convicted running alone, not dead of attempts its neighbours used up
        assert "killed its worker 3 times" in cluster.observer.finals(ident)[0]["reason"], ident
    assert pool.popen.poll() is None, "the supervisor gave up:\n" + pool.text()[-2000:]


def test_a_broker_crash_before_its_first_autosave_loses_no_acknowledged_task(cluster: Cluster) -> None:
    """Issue 13 item 4, as it happened: the tasks wait in the broker's memory only, for the session
    of a coordinator that is down, and the broker crashes before it ever saved that session."""
    coordinator = cluster.coordinator()  # its persistent session subscribes P/tasks/+ ...
    coordinator.kill()                   # ... and keeps it while it is down: the tasks queue for it
    ids = cluster.submit(500)            # no worker is up: the broker holds them for that session alone
    assert not (cluster.mosquitto.workdir / "data" / "mosquitto.db").exists(), "the broker saved already"
    cluster.mark_fault()
    cluster.mosquitto.kill()             # nothing saved: sessions, subscriptions, queued messages
    cluster.mosquitto.start()
    wait_until(lambda: cluster.watching, 30, message="the observer never reconnected")  # or it misses events
    started = time.monotonic()
    coordinator = cluster.coordinator()
    cluster.worker("w1", concurrency=8)
    cluster.worker("w2", concurrency=8)
    cluster.wait_finished(ids, timeout=60)
    print(f"recovered {len(ids)} tasks in {time.monotonic() - started:.1f}s after the restart")
    verdict = settle(cluster, coordinator, timeout=30)
    assert verdict.outcomes == {"succeeded": 500}
    assert verdict.duplicates == 0


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A fresh 2 MiB tmpfs on a mount point of its own (outside tmp_path), unmounted lazily."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    point = Path(tempfile.mkdtemp(prefix="mqtt-tasks-disk-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(point)], check=True)
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)
        point.rmdir()


class DiskFault:
    """Makes the coordinator's disk fail and come back.

    ``full``: a file fills the tmpfs (writes fail with ENOSPC) and is deleted again. ``read-only``:
    Linux refuses to remount a file system read-only while a process has a file on it open for
    writing (the coordinator's database is), so strace attaches to the coordinator and makes every
    write and sync fail with EROFS, as a disk that turned read-only under an open file does; strace
    detaching is the disk coming back.
    """

    def __init__(self, kind: str, disk: Path, pid: int) -> None:
        self.kind, self.disk, self.pid = kind, disk, pid
        self._tracer: subprocess.Popen[bytes] | None = None

    def inject(self) -> None:
        if self.kind == "full":
            subprocess.run(["dd", "if=/dev/zero", f"of={self.disk / 'filler'}", "bs=64k"], capture_output=True)
            return
        calls = "pwrite64,pwritev,fsync,fdatasync,ftruncate"  # SQLite's writes; not the log's or the socket's
        self._tracer = subprocess.Popen(["strace", "-qq", "-f", "-p", str(self.pid), "-o", "/dev/null",
                                         "-e", f"trace={calls}", "-e", f"inject={calls}:error=EROFS"])

    def repair(self) -> None:
        if self.kind == "full":
            (self.disk / "filler").unlink()
        elif self._tracer is not None:
            self._tracer.terminate()
            self._tracer.wait(10)


class CoordinatorWatch:
    """The coordinator's error reports on ``P/errors`` and its retained presence on ``P/coordinator``."""

    def __init__(self, cluster: Cluster) -> None:
        self.settings = Settings.from_url(cluster.mosquitto.url, prefix=cluster.prefix)
        self.reports: list[str] = []
        self.presence: list[str] = []
        self._conn = Connection(self.settings, f"watch-{cluster.prefix}", on_message=self._on_message)
        self._conn.subscribe(f"{cluster.prefix}/errors")
        self._conn.subscribe(f"{cluster.prefix}/coordinator")
        self._conn.connect()

    def _on_message(self, message: Message) -> None:
        body = json.loads(message.payload)
        if message.topic.endswith("/errors"):
            self.reports.append(body["reason"])
        else:
            self.presence.append(body["state"])

    def close(self) -> None:
        self._conn.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_coordinator_whose_disk_fails_stops_acknowledging_and_catches_up(
        cluster: Cluster, small_disk: Path, fault: str) -> None:
    if fault == "read-only" and shutil.which("strace") is None:
        pytest.skip("the read-only disk is injected with strace")
    cluster.db = small_disk / "coordinator.db"
    coordinator = cluster.coordinator("--log-level", "debug")
    watch = CoordinatorWatch(cluster)
    cluster.worker("w1")
    cluster.submit(50)
    cluster.wait_finished(timeout=60)
    worker = cluster.procs[-1]
    disk = DiskFault(fault, small_disk, coordinator.popen.pid)
    cluster.mark_fault()
    disk.inject()
    try:
        cluster.submit(300, 0.01)  # most are deferred to the coordinator before it notices its disk
        wait_until(lambda: "degraded" in watch.presence and watch.reports, 30,
                   message="the coordinator said nothing about its disk")
        stats = query_stats(watch.settings, timeout=10)  # answered from memory
        assert "cannot commit" in stats["store_error"], stats
        wait_until(lambda: "coordinator degraded" in worker.text(), 10, message="the worker never heard")
        during = cluster.submit(100, 0.01)  # the worker keeps these instead of deferring them
        cluster.wait_finished(during, timeout=60)
        repaired_at = time.monotonic()
    finally:
        disk.repair()
    wait_until(lambda: watch.presence[-1] == "online", 30, message="the coordinator never caught up")
    caught_up_s = time.monotonic() - repaired_at
    try:
        verdict = settle(cluster, coordinator, timeout=120)
    finally:
        print(f"presence {watch.presence}, reports {watch.reports}")
        watch.close()
    print(f"{fault}: caught up {caught_up_s:.1f}s after the disk came back")
    assert verdict.outcomes == {"succeeded": 450}
    assert len(watch.reports) == 2 and "cannot commit" in watch.reports[0], watch.reports
    assert "committing again" in watch.reports[1], watch.reports
    said = [line for line in coordinator.text().splitlines() if " DEBUG " not in line and ".outage:" in line]
    assert len(said) == 2 and "Traceback" not in coordinator.text(), said  # once down, once up


def test_a_task_that_outlives_the_grace_is_not_finished_by_the_stopped_worker(cluster: Cluster) -> None:
    coordinator = cluster.coordinator()
    old = cluster.worker("old", "--grace", "1", concurrency=1)
    cluster.submit(1, 5.0)
    wait_until(lambda: cluster.started_by(old) == 1, 30)
    cluster.worker("new")
    stopped_at = time.monotonic()
    cluster.mark_fault()
    old.signal(signal.SIGTERM)
    old.reap(timeout=30)
    assert time.monotonic() - stopped_at < 5.0, "the stopped worker outlived its grace"
    verdict = settle(cluster, coordinator)
    assert verdict.outcomes == {"succeeded": 1}
    ended_by = {pid for _, pid in cluster.ledger_lines("end")}
    assert old.popen.pid not in ended_by and verdict.duplicates == 0
    assert_handed_back_without_a_failure(cluster)


def assert_handed_back_without_a_failure(cluster: Cluster) -> None:
    """Each task was handed back as a started attempt (``deferred``, ``abandoned``) and succeeded as
    the next attempt; no attempt failed: stopping a worker is not the task's fault."""
    for ident in cluster.submitted:
        events = cluster.observer.events[ident]
        assert [e["attempt"] for e in events if e["state"] == "deferred" and e.get("abandoned")] == [1], events
        assert not [e for e in events if e["state"] in ("failed", "retrying")], events
        assert cluster.observer.finals(ident)[0]["attempt"] == 2


def test_sigterm_to_the_whole_process_group_respects_the_grace(cluster: Cluster) -> None:
    """systemd's default stop: SIGTERM reaches the supervisor and its children at once.

    The children run in sessions of their own, so a process-group signal reaches only the
    supervisor; systemd signals every process of the service's control group instead. Each child
    then gets SIGTERM twice (from systemd, and forwarded by the supervisor), and an operator may
    repeat the stop: none of that may cut the grace short."""
    coordinator = cluster.coordinator()
    pool = cluster.worker("pool", "--processes", "2", "--grace", "20", concurrency=2)
    cluster.submit(4, 3.0)
    wait_until(lambda: len(cluster.ledger_lines("start")) == 4, 30)
    cluster.mark_fault()
    pool.signal_tree(signal.SIGTERM)  # the children first, then the supervisor
    pool.signal_tree(signal.SIGTERM)  # `systemctl stop` again
    assert pool.reap(timeout=60) == 0, pool.text()[-2000:]
    verdict = settle(cluster, coordinator)
    assert verdict.outcomes == {"succeeded": 4}
    assert verdict.duplicates == 0 and len(cluster.ledger_lines("start")) == 4  # none requeued


def test_a_systemd_stop_of_a_pool_hands_back_what_outlives_the_grace_and_restarts_nothing(cluster: Cluster) -> None:
    """The same control-group stop, with tasks longer than the grace: every child hands its tasks
    back and exits after the grace, the supervisor restarts none of them and exits cleanly, and
    another worker runs each task once more, to its end."""
    coordinator = cluster.coordinator()
    pool = cluster.worker("pool", "--processes", "2", "--grace", "1", concurrency=2)
    cluster.submit(4, 6.0)
    wait_until(lambda: len(cluster.ledger_lines("start")) == 4, 30)
    new = cluster.worker("new", concurrency=4)
    stopped_at = time.monotonic()
    cluster.mark_fault()
    pool.signal_tree(signal.SIGTERM)
    assert pool.reap(timeout=60) == 0, pool.text()[-2000:]
    assert time.monotonic() - stopped_at < 5.0, "the pool outlived its grace"
    assert "restarting" not in pool.text() and pool.text().count("started worker") == 2
    verdict = settle(cluster, coordinator)
    assert verdict.outcomes == {"succeeded": 4}
    assert {pid for _, pid in cluster.ledger_lines("end")} == {new.popen.pid} and verdict.duplicates == 0
    assert_handed_back_without_a_failure(cluster)
