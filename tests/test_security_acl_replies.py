"""With ACLs on, a user's producers get their results and the coordinator's receipts under the
user's own ``P/replies/{username}/`` subtree, each from a client id of its own
(protocol/rpc.py ``reply_address``; docs/security.md "Users, roles and topic ACLs").

Against a real Mosquitto with the generated password and ACL files (the ``secured`` fixture of
tests/test_security_acl.py), a real coordinator process and a real worker; what ran is counted
from the ledger the task bodies write (tests/chaos_tasks.py), the receipts from a spy that reads
every reply topic.
"""

from __future__ import annotations

from pathlib import Path

from mqtt_tasks import Settings, TaskApp
from mqtt_tasks.acl import role_rules
from mqtt_tasks.protocol.topics import Topics
from mqtt_tasks.transport import Connection
from tests.brokers import MosquittoProcess, wait_until
from tests.coord_helpers import executions, worker
from tests.test_security_acl import (  # noqa: F401  (fixtures)
    Recorder,
    assert_denied,
    connect,
    open_conns,
    secured,
    settings_for,
)
from tests.test_security_acl_queries import cli_as, coordinator_process, url_of


def rules_of(role: str, ident: str) -> set[tuple[str, str]]:
    return {(r.access, r.topic) for r in role_rules(role, ident, prefix="P")}


def test_a_users_producers_read_their_subtree_workers_and_the_coordinator_write_it() -> None:
    for role in ("producer", "dashboard"):
        assert {("read", "P/replies/u1"), ("read", "P/replies/u1/+"),
                ("read", "P/replies/u1/+/receipts")} <= rules_of(role, "u1"), role
    writes = {t for a, t in rules_of("worker", "w1") if a == "write" and t.startswith("P/replies/")}
    assert writes == {"P/replies/+", "P/replies/+/+"}  # final events; never a receipt of a user's producer
    assert {"P/replies/+", "P/replies/+/+", "P/replies/+/+/+"} <= {t for a, t in rules_of("coordinator", "c1")
                                                                   if a == "write"}


def test_without_a_username_or_with_a_client_id_the_reply_topics_are_as_before() -> None:
    t = Topics("P")
    anonymous = TaskApp(settings=Settings.from_url("mqtt://127.0.0.1:1", prefix="P"))
    assert anonymous.client_id.startswith("mqtt-tasks-p-") and anonymous.reply_topic == t.replies(anonymous.client_id)
    assert anonymous.receipt_topic == t.replies(anonymous.client_id) + "/receipts"
    named = TaskApp(settings=Settings.from_url("mqtt://p1:pw@127.0.0.1:1", prefix="P"), client_id="p1")
    assert (named.client_id, named.reply_topic, named.receipt_topic) == ("p1", "P/replies/p1", "P/replies/p1/receipts")
    users = [TaskApp(settings=Settings.from_url("mqtt://p1:pw@127.0.0.1:1", prefix="P")) for _ in range(2)]
    assert users[0].client_id != users[1].client_id and all(a.client_id.startswith("p1-p-") for a in users)
    assert all(a.reply_topic == "P/replies/p1/" + a.client_id[len("p1-"):] for a in users)
    assert all(a.receipt_topic == a.reply_topic + "/receipts" for a in users)


def test_two_processes_of_one_producer_user_each_get_their_results_and_receipts(
        secured: MosquittoProcess, prefix: str, tmp_path: Path, open_conns: list[Connection]) -> None:  # noqa: F811
    t = Topics(prefix)
    ledger = str(tmp_path / "ledger")
    spy = Recorder(secured, "spy", client_id="spy-replies").subscribe(f"{prefix}/replies/#")
    connect(open_conns, spy.conn)
    apps = [TaskApp(settings=settings_for(secured, "p1", prefix=prefix)) for _ in range(2)]
    with coordinator_process(secured, prefix, tmp_path / "c.db"), \
            worker(url_of(secured, "w1"), prefix, "w1", log=ledger), apps[0], apps[1]:
        for app in apps:
            app.connect()
            assert app.client_id.startswith("p1-") and app.reply_topic.startswith(t.replies("p1") + "/")
        wait_until(lambda: all(a.connection().connected for a in apps), 10)
        handles = {(i, n): app.submit("work", f"app{i}-{n}") for i, app in enumerate(apps) for n in range(3)}
        for (i, n), handle in handles.items():
            assert handle.result(timeout=30) == f"app{i}-{n}"  # each on its own reply topic
        for app in apps:
            assert app.wait_recorded(30) and app.unconfirmed == 0
            wait_until(lambda a=app: a.receipt_topic in spy.topics(), 10,  # type: ignore[misc]
                       message=f"no receipt on {app.receipt_topic}")
            assert app.reply_topic in spy.topics()
        assert all(a.connection().connected for a in apps)  # neither took over the other's session
        # the other producer user (p2) reads neither subtree
        intruder = Recorder(secured, "p2", client_id="p2-rec").subscribe(f"{prefix}/replies/#")
        connect(open_conns, intruder.conn)
        assert_denied(connect(open_conns, Connection(settings_for(secured, "w1"), "w1-x")), [], intruder, spy.conn,
                      t.replies("p2") + "/canary")
        assert not [topic for topic in intruder.topics() if topic.startswith(t.replies("p1"))]
    ran = executions(ledger)
    assert sorted(ran) == sorted(f"app{i}-{n}" for i, n in handles)
    assert all([kind for kind, _ in ran[i]] == ["start", "end"] for i in ran), ran  # each ran once


def test_a_worker_replies_into_a_users_subtree_but_cannot_forge_its_producers_receipts(
        secured: MosquittoProcess, prefix: str, open_conns: list[Connection]) -> None:  # noqa: F811
    t = Topics(prefix)
    spy = Recorder(secured, "spy", client_id="spy-w").subscribe(f"{prefix}/replies/#")
    connect(open_conns, spy.conn)
    worker_conn = connect(open_conns, Connection(settings_for(secured, "w1"), "w1"))
    reply = t.replies("p1") + "/p-abc"
    worker_conn.publish(reply, b'{"id":"x","state":"succeeded"}')
    assert worker_conn.flush(5)
    wait_until(lambda: reply in spy.topics(), message="the worker's reply into p1's subtree never arrived")
    assert_denied(worker_conn, [reply + "/receipts", t.replies("p1") + "/p-abc/x/y"], spy, spy.conn,
                  t.replies("p1") + "/canary")


def test_the_cli_submit_wait_as_a_producer_user_prints_the_result(
        secured: MosquittoProcess, prefix: str, tmp_path: Path) -> None:  # noqa: F811
    ledger = str(tmp_path / "ledger")
    with coordinator_process(secured, prefix, tmp_path / "c.db"), \
            worker(url_of(secured, "w1"), prefix, "w1", log=ledger):
        done = cli_as(secured, "p1", prefix, "submit", "work", "cli-1", "--wait", "--timeout", "60")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == '"cli-1"'
    assert [kind for kind, _ in executions(ledger)["cli-1"]] == ["start", "end"]
