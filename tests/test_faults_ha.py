"""Fault injection for high availability: several coordinators on one prefix and one PostgreSQL database.

The same rig as tests/test_faults.py (a private Mosquitto, the installed ``mqtt-tasks coordinator``
and ``mqtt-worker`` processes, a producer, three independent counts), with three coordinators
(``--db postgresql://...``, a database of the test's own) instead of one, and a fourth witness: the
retained presence on ``P/coordinator``, which names the leader and its epoch. Each scenario
asserts none lost, one final state each, duplicates only where the fault explains them, and
that leaders never overlap: a new leader's ``online`` comes after the old one went ``offline``,
and a deposed leader never says ``online`` again. Figures: docs/operations.md ("Faults, measured").
"""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mqtt_tasks import Settings
from mqtt_tasks.transport import Connection, Message
from tests.brokers import MosquittoProcess, wait_until
from tests.faults.cluster import Cluster, Process, Verdict, cli
from tests.faults.proxy import TcpProxy
from tests.postgres import ADMIN_URL

pytestmark = pytest.mark.faults

TTL = 5.0  # the default --lease-ttl: what a user gets


class Presences:
    """Every presence on ``P/coordinator``, in the order the broker delivered them, with when."""

    def __init__(self, cluster: Cluster) -> None:
        self.seen: list[tuple[float, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._topic = f"{cluster.prefix}/coordinator"
        self._marks = f"{cluster.prefix}/test-presence-marks"
        self._marked: set[bytes] = set()
        settings = Settings.from_url(cluster.mosquitto.url, prefix=cluster.prefix)
        self._conn = Connection(settings, f"presence-{cluster.prefix}", on_message=self._on_message)
        self._conn.subscribe(self._topic)
        self._conn.subscribe(self._marks)
        self._conn.connect()

    def _on_message(self, message: Message) -> None:
        with self._lock:
            if message.topic == self._marks:
                self._marked.add(message.payload)
            elif message.payload:
                self.seen.append((time.monotonic(), json.loads(message.payload)))

    def catch_up(self) -> None:
        """Return once every presence the broker published before this call has arrived here. A mark of
        ours, published now and looped back on this connection, arrives after them; two marks in turn,
        because a connection closed just before (a Last Will to come) may be handled in the same pass
        of the broker's loop as the first mark, and then in either order; the second comes a pass later."""
        for _ in range(2):
            mark = uuid.uuid4().hex.encode()
            self._conn.publish(self._marks, mark)
            wait_until(lambda: mark in self.marked(), 10, message="a mark never came back")  # noqa: B023

    def marked(self) -> set[bytes]:
        with self._lock:
            return set(self._marked)

    def events(self) -> list[tuple[float, dict[str, Any]]]:
        with self._lock:
            return list(self.seen)

    def leader(self) -> str | None:
        """The name in the latest presence, when it says ``online``."""
        events = self.events()
        if not events or events[-1][1]["state"] != "online":
            return None
        return str(events[-1][1].get("name"))

    def first_online(self, name: str, after: float = 0.0) -> float | None:
        return next((t for t, p in self.events() if t >= after and p["state"] == "online" and p.get("name") == name),
                    None)

    def close(self) -> None:
        self._conn.close()


@pytest.fixture
def cluster(mosquitto: MosquittoProcess, tmp_path: Path, postgres_url: str) -> Iterator[Cluster]:
    c = Cluster(mosquitto, tmp_path)
    c.db = postgres_url
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def presences(cluster: Cluster) -> Iterator[Presences]:
    p = Presences(cluster)
    yield p
    p.close()


def coordinator(cluster: Cluster, name: str, *, broker: str | None = None, db: str | None = None) -> Process:
    """One coordinator of the group, with a log of its own; returns once it stands by (or leads)."""
    argv = [*cli("mqtt-tasks"), "coordinator", "--broker", broker or cluster.mosquitto.url, "--prefix",
            cluster.prefix, "--db", db or str(cluster.db), "--ha", "--name", name, "--lease-ttl", str(TTL)]
    proc = Process(name, argv, cluster.workdir / f"{name}.log", cluster.env())
    cluster.procs.append(proc)
    return proc.started()


def group_of_three(cluster: Cluster, presences: Presences, **first: str) -> tuple[Process, Process, Process]:
    c1 = coordinator(cluster, "c1", **first)
    wait_until(lambda: presences.leader() == "c1", 20, message="c1 never led")
    return c1, coordinator(cluster, "c2"), coordinator(cluster, "c3")


def settle_group(cluster: Cluster, *coordinators: Process, timeout: float = 90.0) -> Verdict:
    """Wait for every task's final event, stop the whole group (standbys first), count three ways."""
    cluster.wait_finished(timeout=timeout)
    for proc in coordinators:
        proc.signal(signal.SIGTERM)
        assert proc.reap() == 0, proc.text()[-3000:]
    verdict = cluster.verdict()
    print(verdict.summary())
    assert verdict.lost == [], f"{len(verdict.lost)} tasks lost"
    assert verdict.several_finals == [], f"{len(verdict.several_finals)} tasks ended twice"
    for ident in cluster.submitted:  # the group's one record agrees with the wire
        assert verdict.record.get(ident) == cluster.observer.finals(ident)[0]["state"], ident
    return verdict


def assert_leaders_never_overlap(presences: Presences, old: str, new: str, *, will: bool = True) -> None:
    """``new`` said online only after ``old`` went (its Last Will, or its stop), ``old`` never said
    anything but ``offline`` after that, and ``new`` had the last word until it was stopped. ``will=False``: ``old`` was
    frozen, so it was ``new``'s connection that ended ``old``'s (MQTT's session takeover), and
    Mosquitto sends no Last Will for a session taken over. A later ``offline`` of ``old`` is the Will
    of a stale CONNECT of its that the healed link delivered (docs/coordinator.md, "High availability")."""
    events = presences.events()
    seen = [(p.get("name"), p["state"], p.get("epoch")) for _, p in events]
    came = next(i for i, (_, p) in enumerate(events) if p.get("name") == new and p["state"] == "online")
    went = [i for i, (_, p) in enumerate(events) if p.get("name") == old and p["state"] == "offline"]
    if will:
        assert went and went[0] < came, seen
    else:
        assert not went, seen
    assert not any(p.get("name") == old and p["state"] != "offline" for _, p in events[came:]), seen
    while seen and seen[-1][:2] == (new, "offline"):  # its own clean stop at the end of the test
        seen.pop()
    assert seen[-1][:2] == (new, "online"), seen
    epochs = [p["epoch"] for _, p in events if p["state"] == "online"]
    assert epochs == sorted(epochs), epochs


def other_leader(presences: Presences, old: str) -> str | None:
    leader = presences.leader()
    return leader if leader not in (None, old) else None


def test_the_leader_killed_mid_burst_is_replaced_within_10s_and_loses_nothing(cluster: Cluster,
                                                                               presences: Presences) -> None:
    c1, c2, c3 = group_of_three(cluster, presences)
    cluster.worker("w1", concurrency=8)
    cluster.worker("w2", concurrency=8)
    cluster.submit(1000, 0.1)
    wait_until(lambda: len(cluster.ledger_lines("end")) >= 150, 60)
    cluster.mark_fault()
    killed_at = time.monotonic()
    c1.kill()
    new = wait_until(lambda: other_leader(presences, "c1"), 15, message="no standby took over")
    took = (presences.first_online(new, killed_at) or 0) - killed_at
    print(f"{new} leads {took:.1f} s after the kill -9 of c1")
    assert took < 10.0
    standby = c3 if new == "c2" else c2
    verdict = settle_group(cluster, standby, c2 if new == "c2" else c3)
    assert verdict.outcomes == {"succeeded": 1000}
    assert verdict.duplicates == 0  # the workers lived: nothing they held was presumed lost
    assert_leaders_never_overlap(presences, "c1", new)


def test_a_leader_cut_from_its_database_steps_down_before_a_standby_leads(cluster: Cluster,
                                                                          presences: Presences) -> None:
    name = str(cluster.db).rsplit("/", 1)[1]
    link = TcpProxy(int(ADMIN_URL.rsplit(":", 1)[1].split("/")[0]))
    try:
        via_link = f"postgresql://postgres@127.0.0.1:{link.port}/{name}"
        c1, c2, c3 = group_of_three(cluster, presences, db=via_link)
        cluster.worker("w1", concurrency=8)
        cluster.worker("w2", concurrency=8)
        cluster.submit(300, 0.1)
        wait_until(lambda: len(cluster.ledger_lines("end")) >= 50, 60)
        cluster.mark_fault()
        cut_at = time.monotonic()
        link.partition()  # c1 still reaches the broker, and would go on if its lease let it
        new = wait_until(lambda: other_leader(presences, "c1"), 20, message="no standby took over")
        took = (presences.first_online(new, cut_at) or 0) - cut_at
        print(f"{new} leads {took:.1f} s after c1's database link was cut")
        wait_until(lambda: "stepping down" in c1.text(), 10, message="c1 never stepped down")
        cluster.wait_finished(timeout=90)
        link.heal()  # c1's database comes back: it must stand by, not lead again
        wait_until(lambda: c1.text().count("standing by for") >= 2, 3 * TTL, message="c1 never stood by again")
    finally:
        link.close()
    standby = c3 if new == "c2" else c2
    verdict = settle_group(cluster, c1, standby, c2 if new == "c2" else c3)
    assert verdict.outcomes == {"succeeded": 300}
    assert verdict.duplicates == 0
    assert_leaders_never_overlap(presences, "c1", new)


def test_a_leader_cut_from_the_broker_gives_the_lead_to_a_standby(cluster: Cluster, presences: Presences) -> None:
    link = TcpProxy(cluster.mosquitto.port)
    try:
        c1, c2, c3 = group_of_three(cluster, presences, broker=f"{link.url}?keepalive=2")
        cluster.worker("w1", concurrency=8)
        cluster.worker("w2", concurrency=8)
        cluster.submit(300, 0.1)
        wait_until(lambda: len(cluster.ledger_lines("end")) >= 50, 60)
        cluster.mark_fault()
        cut_at = time.monotonic()
        link.partition()  # c1 still reaches the database, and would keep its lease if it let itself
        new = wait_until(lambda: other_leader(presences, "c1"), 30, message="no standby took over")
        took = (presences.first_online(new, cut_at) or 0) - cut_at
        print(f"{new} leads {took:.1f} s after c1's broker link was cut")
        wait_until(lambda: "leadership released" in c1.text(), 10, message="c1 never released the lease")
        cluster.wait_finished(timeout=90)
        link.heal()  # c1 reaches the broker again: it must stand by, not take the session back
        wait_until(lambda: c1.text().count("standing by for") >= 2, 3 * TTL, message="c1 never stood by again")
        # The CONNECTs c1 tried while cut off reach the broker now, take the session from the new
        # leader for a moment, and end with c1's Last Will: the new leader reconnects and answers it.
        wait_until(lambda: not link.relaying, 10, message="the link never went quiet")
        # Every stale connection is closed now, but its Will may still be on its way: a leader read
        # before it arrived would be stale, and the new leader, kicked off by that connection and
        # still waiting to reconnect, could be stopped before it said online again.
        presences.catch_up()
        wait_until(lambda: presences.leader() == new, 10, message=f"{new} did not say online again")
    finally:
        link.close()
    standby = c3 if new == "c2" else c2
    verdict = settle_group(cluster, c1, standby, c2 if new == "c2" else c3)
    assert verdict.outcomes == {"succeeded": 300}
    assert_leaders_never_overlap(presences, "c1", new)


def test_a_frozen_leader_thaws_as_a_standby(cluster: Cluster, presences: Presences) -> None:
    c1, c2, c3 = group_of_three(cluster, presences)
    cluster.worker("w1", concurrency=8)
    cluster.worker("w2", concurrency=8)
    cluster.submit(300, 0.1)
    wait_until(lambda: len(cluster.ledger_lines("end")) >= 50, 60)
    cluster.mark_fault()
    frozen_at = time.monotonic()
    c1.signal(signal.SIGSTOP)  # a long pause (GC, swap, a VM migration): its sockets stay open
    new = wait_until(lambda: other_leader(presences, "c1"), 20, message="no standby took over")
    print(f"{new} leads {(presences.first_online(new, frozen_at) or 0) - frozen_at:.1f} s after c1 froze")
    c1.signal(signal.SIGCONT)  # it wakes up believing it leads, for a moment
    wait_until(lambda: "stepping down" in c1.text(), 10, message="c1 never stepped down")
    cluster.wait_finished(timeout=90)
    wait_until(lambda: c1.text().count("standing by for") >= 2, 3 * TTL, message="c1 never stood by again")
    standby = c3 if new == "c2" else c2
    verdict = settle_group(cluster, c1, standby, c2 if new == "c2" else c3)
    assert verdict.outcomes == {"succeeded": 300}
    assert verdict.duplicates == 0
    assert_leaders_never_overlap(presences, "c1", new, will=False)


@pytest.mark.parametrize("store", ["postgres", "sqlite"])
def test_a_clean_stop_hands_over_at_once_and_the_leader_outlasts_a_stray_will(cluster: Cluster, presences: Presences,
                                                                               store: str) -> None:
    if store == "sqlite":  # coordinators on one machine can share a file the same way
        cluster.db = cluster.workdir / "group.db"
    c1 = coordinator(cluster, "c1")
    wait_until(lambda: presences.leader() == "c1", 20, message="c1 never led")
    c2 = coordinator(cluster, "c2")
    # A former leader's Last Will arriving late would say "no coordinator": the leader answers it (no
    # worker has joined yet, so no other presence of the leader's is due for 15 s).
    cluster.app.connection().publish(f"{cluster.prefix}/coordinator", b'{"state":"offline","name":"gone"}',
                                   retain=True)
    def answered() -> bool:
        names = [p.get("name") for _, p in presences.events()]
        return "gone" in names and names[-1] == "c1" and presences.leader() == "c1"

    wait_until(answered, 5, message="the leader let a stray offline presence stand")
    cluster.worker("w1", concurrency=4)
    first = cluster.submit(20, 0.05)
    cluster.wait_finished(first)
    stopped_at = time.monotonic()
    c1.signal(signal.SIGTERM)
    assert c1.reap() == 0, c1.text()[-3000:]
    wait_until(lambda: presences.leader() == "c2", 2 * TTL, message="c2 never took over")
    took = (presences.first_online("c2", stopped_at) or 0) - stopped_at
    print(f"c2 leads {took:.1f} s after c1 was stopped")
    assert took < 2.0  # released, not run out
    presences.catch_up()  # a Last Will of c1's would be here by now
    said = [p["state"] for t, p in presences.events() if t >= stopped_at and p.get("name") == "c1"]
    assert said == ["offline"], f"c1 after its clean stop: {said} (a second offline is its Last Will)"
    cluster.submit(20, 0.05)
    verdict = settle_group(cluster, c2)
    assert verdict.outcomes == {"succeeded": 40}
    assert verdict.duplicates == 0
