"""Offline devices (docs/offline.md): a worker whose link drops keeps running what it holds, keeps
its results in its outbox (SQLite) across a restart of its process, and delivers them in order
when the link is back. The link is cut with a real TCP relay (tests/faults/proxy.py); the worker
is a real ``mqtt-worker`` process, killed with SIGKILL while cut and started again while cut.

The outage lasts ``OFFLINE_OUTAGE_S`` seconds (default 2; the issue's measurement is 300:
``OFFLINE_OUTAGE_S=300 pytest tests/test_outbox.py``)."""

from __future__ import annotations

import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from mqtt_tasks import TaskApp
from mqtt_tasks.app import TaskOptions
from mqtt_tasks.config import Settings
from mqtt_tasks.coordinator import query_status
from mqtt_tasks.transport import Connection
from mqtt_tasks.worker.outbox import Outbox
from tests import routing_tasks
from tests.brokers import wait_until
from tests.coord_helpers import HB, coordinator, settings
from tests.faults.proxy import TcpProxy

ROOT = Path(__file__).resolve().parent.parent
OUTAGE_S = float(os.environ.get("OFFLINE_OUTAGE_S", "2"))
TIMEOUT = 30.0 + OUTAGE_S


class WorkerProcess:
    """``mqtt-worker tests.routing_tasks:app --outbox PATH`` with its output (stdout and the log)
    read on a thread, so a test can wait for a line."""

    def __init__(self, url: str, prefix: str, outbox: str, worker_id: str = "edge-1") -> None:
        argv = [sys.executable, "-m", "mqtt_tasks", "worker", "tests.routing_tasks:app", "--broker", url,
                "--prefix", prefix, "--worker-id", worker_id, "--concurrency", "4", "--heartbeat", str(HB),
                "--grace", "2", "--outbox", outbox, "--log-level", "info"]
        self.popen = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.output: list[str] = []
        threading.Thread(target=self._read, name="test-worker-output", daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.output.append(line)
            self.lines.put(line)

    def wait_line(self, needle: str, timeout: float = TIMEOUT) -> str:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line with {needle!r}; output so far: {''.join(self.output)}") from None
            if needle in line:
                return line

    def kill(self) -> None:
        self.popen.kill()
        self.popen.wait(10)

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(30)


def pending(outbox: str, topic_part: str = "") -> int:
    """Messages in the outbox file (whose topic contains ``topic_part``)."""
    db = sqlite3.connect(outbox)
    try:
        count: int = db.execute("SELECT COUNT(*) FROM outbox WHERE instr(topic, ?) > 0", (topic_part,)).fetchone()[0]
    finally:
        db.close()
    return count


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    path = str(tmp_path / "ledger")
    monkeypatch.setenv("ROUTING_LEDGER", path)
    return path


def test_a_worker_cut_off_and_restarted_loses_no_result(mosquitto: Any, prefix: str, tmp_path: Path,
                                                         ledger: str) -> None:
    outbox = str(tmp_path / "outbox.db")
    link = TcpProxy(mosquitto.port)
    first = second = None
    try:
        with coordinator(mosquitto.url, prefix), TaskApp(broker=mosquitto.url, prefix=prefix) as producer:
            first = WorkerProcess(link.url, prefix, outbox)
            first.wait_line("ready")
            handles = {f"job-{i}": producer.send("offline_job", [f"job-{i}", 1.0], {}, options=TaskOptions())
                       for i in range(4)}
            wait_until(lambda: len(routing_tasks.ledger(ledger)) == 4, TIMEOUT, message="the 4 jobs never started")
            link.partition()  # the cable is cut while all four run
            wait_until(lambda: len(routing_tasks.runs_by_pid(ledger)) == 8, TIMEOUT,
                       message="the jobs did not finish while cut off")  # 4 starts + 4 ends, by the first process
            # the 4 final events and their 4 replies, committed in pairs (and maybe `started` events)
            wait_until(lambda: pending(outbox, "/replies/") == 4, TIMEOUT,
                       message="the results never reached the outbox")
            kept = pending(outbox)
            assert kept >= 8
            first.kill()  # the device restarts while still cut off
            second = WorkerProcess(link.url, prefix, outbox)
            second.wait_line("wait in the outbox")  # it starts without a network and keeps trying
            assert not any(h.done() for h in handles.values())
            threading.Event().wait(OUTAGE_S)  # the fault itself: the link stays down this long
            assert pending(outbox) == kept  # nothing left the device meanwhile
            assert second.popen.poll() is None, "".join(second.output)
            link.heal()
            wait_until(lambda: all(h.done() for h in handles.values()), TIMEOUT,
                       message=f"results lost; the restarted worker said: {''.join(second.output)}")
            results = {ident: h.result(0) for ident, h in handles.items()}
            wait_until(lambda: pending(outbox) == 0, TIMEOUT, message="the outbox was not emptied")
            histories = {ident: query_status(settings(mosquitto.url, prefix), h.id)["history"]
                         for ident, h in handles.items()}
        assert second.stop() == 0, "".join(second.output)
    finally:
        link.close()
        for proc in (first, second):
            if proc is not None and proc.popen.poll() is None:
                proc.kill()
    first_pid = first.popen.pid
    for ident, history in histories.items():
        # the first process's result of attempt 1 reached the coordinator: recorded as the result or,
        # had a re-dispatch finished first, as a duplicate (fencing), never lost
        assert any(e.get("attempt") == 1 and e.get("event") in ("succeeded", "duplicate") for e in history), (
            ident, history)
    assert all(runs.count(first_pid) == 1 for ident, runs in routing_tasks.runs_by_pid(ledger).items()
               if not ident.startswith("start:"))
    assert set(results) == set(handles) and all(r.startswith(ident) for ident, r in results.items())


def test_the_outbox_sends_in_order_and_keeps_what_the_broker_has_not_acknowledged(
        mosquitto: Any, prefix: str, tmp_path: Path) -> None:
    """The outbox alone on a real connection: stored while the link is cut, delivered in order
    after it heals; a new Outbox on the same file (a restarted process) sends what is left first."""
    from tests.test_request_response import PlainClient

    path = str(tmp_path / "outbox.db")
    observer = PlainClient(mosquitto.url, mqtt5=False)
    observer.subscribe(f"{prefix}/out/#")
    link = TcpProxy(mosquitto.port)
    stopped = threading.Event()
    conn = Connection(Settings.from_url(link.url, prefix=prefix), f"outbox-{prefix}")
    conn.connect(10)
    try:
        link.partition()
        box = Outbox(path, conn, 1 << 16, stopped)
        for i in range(5):
            box.publish(f"{prefix}/out/a", f'{{"n": {i}}}'.encode())
        assert box.send_round(0.2) == 0 and box.pending() == 5  # handed over, not acknowledged
        box.close()
        link.close()  # what was handed over never arrives
        conn.abort()  # the process dies
        conn = Connection(Settings.from_url(mosquitto.url, prefix=prefix), f"outbox2-{prefix}")
        conn.connect(10)
        again = Outbox(path, conn, 1 << 16, stopped)  # the restarted process
        again.publish(f"{prefix}/out/a", b'{"n": 5}')
        assert wait_until(lambda: again.send_round(0.2) or again.pending() == 0, 10)
        assert again.pending() == 0
        seen: list[int] = []  # the cut link's relay may still deliver the first copies: fencing's job
        while 5 not in seen:
            n = observer.next()[1]["n"]
            if n not in seen:
                seen.append(n)
        assert seen == [0, 1, 2, 3, 4, 5]
        again.close()
    finally:
        stopped.set()
        conn.close(1.0)
        link.close()
        observer.close()


def test_the_cli_refuses_a_bad_outbox_in_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from mqtt_tasks.cli import worker_command
    from tests.test_cli import assert_one_line_error

    bad = str(tmp_path / "no-such-dir" / "outbox.db")
    result = CliRunner().invoke(worker_command, ["tests.routing_tasks:app", "--outbox", bad], prog_name="mqtt-worker")
    assert "cannot use" in assert_one_line_error(result, 2) and "outbox" in result.stderr
    result = CliRunner().invoke(worker_command, ["tests.routing_tasks:app", "--outbox", str(tmp_path / "o.db"),
                                                 "--processes", "2"], prog_name="mqtt-worker")
    assert "one worker process" in assert_one_line_error(result, 2)


def test_an_outbox_that_cannot_write_still_sends(mosquitto: Any, prefix: str, tmp_path: Path) -> None:
    """A broken outbox file (here: its table dropped under it) degrades to sending without it."""
    from tests.test_request_response import PlainClient

    path = str(tmp_path / "outbox.db")
    observer = PlainClient(mosquitto.url, mqtt5=False)
    observer.subscribe(f"{prefix}/out/#")
    conn = Connection(Settings.from_url(mosquitto.url, prefix=prefix), f"outbox-{prefix}").connect(10)
    box = Outbox(path, conn, 1 << 16, threading.Event())
    try:
        other = sqlite3.connect(path)
        other.execute("DROP TABLE outbox")
        other.commit()
        other.close()
        box.publish(f"{prefix}/out/x", b'{"n": 1}')
        assert observer.next()[1] == {"n": 1}
    finally:
        box.close()
        conn.close(1.0)
        observer.close()


def test_the_outbox_keeps_a_messages_user_properties_across_a_restart(
        mosquitto: Any, prefix: str, tmp_path: Path) -> None:
    """A trace context (MQTT 5 User Properties, tracing.py) is kept with the message in the outbox
    and sent with it, also by the restarted process; a publish with none is kept too."""
    path = str(tmp_path / "outbox.db")
    got: queue.Queue[Any] = queue.Queue()
    settings = Settings.from_url(mosquitto.url, prefix=prefix)
    observer = Connection(settings, f"observer-{prefix}", on_message=got.put)
    observer.subscribe(f"{prefix}/out/#")
    observer.connect(10)
    stopped = threading.Event()
    conn = Connection(settings, f"outbox-{prefix}")
    conn.connect(10)
    try:
        box = Outbox(path, conn, 1 << 16, stopped)
        box.publish(f"{prefix}/out/a", b'{"n": 0}', user_properties=[("traceparent", "00-abc-def-01")])
        box.publish(f"{prefix}/out/a", b'{"n": 1}', user_properties=None)
        assert box.pending() == 2  # both kept, the traced one too
        box.close()  # never sent: the process "dies" with both kept
        again = Outbox(path, conn, 1 << 16, stopped)
        assert wait_until(lambda: again.send_round(0.2) or again.pending() == 0, 10)
        first, second = got.get(timeout=10), got.get(timeout=10)
        assert (first.payload, first.user_properties) == (b'{"n": 0}', (("traceparent", "00-abc-def-01"),))
        assert (second.payload, second.user_properties) == (b'{"n": 1}', ())
        again.close()
    finally:
        stopped.set()
        conn.close(1.0)
        observer.close()
