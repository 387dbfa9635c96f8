"""Roles and least privilege (mqtt_tasks.acl) against a real Mosquitto with
password_file + acl_file + allow_anonymous false, exactly as docs/security.md tells operators.

Denials are proven with a canary: the forbidden publishes are acknowledged first (PUBACK means
Mosquitto has routed or refused them), then a canary goes to the same subscriber; Mosquitto
delivers to one client in order, so once the canary is in, anything that was going to arrive
has arrived.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mqtt_tasks import ConnectError, Settings, TaskApp, Worker
from mqtt_tasks.acl import (
    ROLES,
    Credentials,
    acl_block,
    generate,
    install,
    password_entry,
    role_rules,
    split_acl,
    verify_password,
)
from mqtt_tasks.errors import ConfigError
from mqtt_tasks.protocol.topics import Topics
from mqtt_tasks.transport import Connection, Message, Will
from tests.brokers import MosquittoProcess, wait_until
from tests.conftest import MosquittoFactory

USERS = {"p1": "producer", "p2": "producer", "w1": "worker", "w2": "worker", "c1": "coordinator", "m1": "monitor",
         "d1": "deployer", "o1": "operator", "dash1": "dashboard"}


def password_of(user: str) -> str:
    return f"secret-{user}-pw"


class Recorder:
    """A connection that records every message it receives."""

    def __init__(self, broker: MosquittoProcess, user: str, client_id: str | None = None, **kw: object) -> None:
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self.conn = Connection(settings_for(broker, user, **kw), client_id or f"{user}-rec", on_message=self._add)

    def _add(self, message: Message) -> None:
        with self._lock:
            self.messages.append(message)

    def topics(self) -> list[str]:
        with self._lock:
            return [m.topic for m in self.messages]

    def subscribe(self, *filters: str) -> Recorder:
        for f in filters:
            self.conn.subscribe(f)
        return self


def settings_for(broker: MosquittoProcess, user: str | None, **kw: object) -> Settings:
    auth = f"{user}:{password_of(user)}@" if user else ""
    return Settings.from_url(f"mqtt://{auth}127.0.0.1:{broker.port}", **kw)


@pytest.fixture
def secured(mosquitto_factory: MosquittoFactory, tmp_path: Path, prefix: str) -> MosquittoProcess:
    """Mosquitto from the shipped config with the three lines docs/security.md adds."""
    pw, acl = tmp_path / "passwd", tmp_path / "acl"
    for user, role in USERS.items():
        install(generate(role, user, password_of(user), prefix=prefix), password_file=pw, acl_file=acl)
    # A test-only observer that may read and write everything under the prefix.
    spy = Credentials("spy", "spy", password_entry("spy", password_of("spy")),
                      f"user spy\ntopic readwrite {prefix}/#\n")
    install(spy, password_file=pw, acl_file=acl)
    return mosquitto_factory([f"password_file {pw}", f"acl_file {acl}", "allow_anonymous false"])


@pytest.fixture
def open_conns() -> Iterator[list[Connection]]:
    conns: list[Connection] = []
    yield conns
    for c in conns:
        c.close(1.0)


def connect(conns: list[Connection], conn: Connection) -> Connection:
    conns.append(conn)
    return conn.connect()


def assert_denied(publisher: Connection, forbidden: list[str], subscriber: Recorder, spy: Connection,
                  canary: str) -> None:
    for topic in forbidden:
        publisher.publish(topic, b'{"forged":true}')
    assert publisher.flush(5), "the broker did not acknowledge the publishes"
    spy.publish(canary, b"canary")
    wait_until(lambda: canary in subscriber.topics(), message=f"canary {canary} never arrived")
    leaked = [t for t in subscriber.topics() if t in forbidden]
    assert leaked == [], f"the broker delivered forbidden publishes: {leaked}"


# -- the generator (pure) ---------------------------------------------------------------------

def test_password_entry_matches_mosquitto_passwd_format() -> None:
    line = password_entry("w1", "pw")
    assert line.startswith("w1:$7$101$")
    assert verify_password(line, "pw") and not verify_password(line, "other")


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd not installed")
def test_verify_password_reads_mosquitto_passwd_output(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(path), "w1", "pw"], check=True)
    assert verify_password(path.read_text().splitlines()[0], "pw")


def test_worker_role_is_least_privilege() -> None:
    t = Topics("P")
    rules = {(r.access, r.topic) for r in role_rules("worker", "w1", prefix="P", queues=["default"])}
    assert rules == {("readwrite", t.tasks("default")), ("read", t.inbox("w1")), ("read", t.control("w1")),
                     ("read", t.coordinator), ("readwrite", t.probe("w1")), ("write", "P/status/+"),
                     ("write", t.worker("w1")), ("write", t.errors), ("write", "P/replies/+"),
                     ("write", "P/replies/+/+"), ("read", "P/cancel/+"), ("readwrite", "P/routed/default/+"),
                     ("read", "P/deploy/bundle/w1"), ("write", "P/deploy/status/w1")}


def rules_of(role: str, ident: str, **kw: object) -> set[tuple[str, str]]:
    return {(r.access, r.topic) for r in role_rules(role, ident, prefix="P", **kw)}  # type: ignore[arg-type]


def test_deployer_role_talks_to_the_coordinator_only() -> None:
    assert rules_of("deployer", "d1") == {("write", "P/rpc/deploy"), ("read", "P/replies/d1/+"),
                                          ("read", "P/deploy/status/+"), ("read", "P/coordinator")}
    coordinator = rules_of("coordinator", "c1")
    assert {("write", "P/deploy/bundle/+"), ("read", "P/deploy/status/+"), ("read", "P/rpc/deploy")} <= coordinator


def test_monitor_role_reads_and_asks_read_only_queries_only() -> None:
    rules = rules_of("monitor", "m1")
    assert {topic for access, topic in rules if access != "read"} == {"P/rpc/query"}
    assert ("read", "P/replies/m1/+") in rules


def test_query_rights_follow_the_ops_each_role_may_ask() -> None:
    """Read-only queries for producers, monitors, operators and the dashboard; the changing ops
    (P/rpc/coordinator) for the operator and the dashboard (retry); deploy ops for the deployer only."""
    writers = {role: {t for a, t in rules_of(role, "u1") if a in ("write", "readwrite") and "/rpc/" in t}
               for role in ROLES}
    assert writers == {"producer": {"P/rpc/query"}, "monitor": {"P/rpc/query"}, "worker": set(),
                       "coordinator": set(), "deployer": {"P/rpc/deploy"},
                       "operator": {"P/rpc/query", "P/rpc/coordinator"},
                       "dashboard": {"P/rpc/query", "P/rpc/coordinator"}}
    coordinator = rules_of("coordinator", "c1")
    assert {("read", "P/rpc/query"), ("read", "P/rpc/coordinator"), ("write", "P/replies/+/+")} <= coordinator
    for role in ("producer", "monitor", "operator", "deployer", "dashboard"):
        assert ("read", "P/replies/u1/+") in rules_of(role, "u1"), role  # the user's own answers only
        assert not any(t.startswith("P/replies/") and "u1" not in t for _, t in rules_of(role, "u1")), role


def test_the_dashboard_role_is_a_producer_that_reads_the_live_view_and_may_retry() -> None:
    producer, dashboard = rules_of("producer", "u1", queues=["q"]), rules_of("dashboard", "u1", queues=["q"])
    assert dashboard - producer == {("read", "P/workers/+"), ("read", "P/tasks/+"), ("write", "P/rpc/coordinator")}
    assert producer <= dashboard and ("write", "P/tasks/q") in dashboard and ("write", "P/tasks/+") not in dashboard
    operator = rules_of("operator", "o1")
    assert {t for a, t in operator if a == "write"} == {"P/rpc/coordinator", "P/rpc/query", "P/cancel/+"}


@pytest.mark.parametrize("bad", ["", "a/b", "a+b", "#", "x" * 129])
def test_ids_that_are_not_topic_safe_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        acl_block("worker", bad)


def test_unknown_role_refused() -> None:
    with pytest.raises(ConfigError, match="unknown role"):
        role_rules("admin", "x")
    assert ROLES == ("producer", "worker", "coordinator", "monitor", "deployer", "operator", "dashboard")


def test_install_replaces_the_users_entries(tmp_path: Path) -> None:
    pw, acl = tmp_path / "passwd", tmp_path / "acl"
    install(generate("worker", "w1", "one"), password_file=pw, acl_file=acl)
    install(generate("producer", "p1", "two"), password_file=pw, acl_file=acl)
    install(generate("monitor", "w1", "three"), password_file=pw, acl_file=acl)
    lines = pw.read_text().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["p1", "w1"]
    assert verify_password(lines[1], "three")
    blocks = split_acl(acl.read_text())
    assert len(blocks) == 2 and "monitor w1" in blocks[1] and "producer p1" in blocks[0]
    assert oct(pw.stat().st_mode & 0o777) == "0o600"


# -- against Mosquitto -------------------------------------------------------------------------

def test_anonymous_and_bad_passwords_are_refused(secured: MosquittoProcess) -> None:
    with pytest.raises(ConnectError, match="refused the credentials"):
        Connection(settings_for(secured, None), "anon").connect(3)
    bad = Settings.from_url(f"mqtt://w1:wrong@127.0.0.1:{secured.port}")
    with pytest.raises(ConnectError, match="refused the credentials"):
        Connection(bad, "w1").connect(3)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_worker_cannot_publish_dead_letters_presence_or_others_topics(
        secured: MosquittoProcess, prefix: str, open_conns: list[Connection], protocol: str) -> None:
    t = Topics(prefix)
    spy = Recorder(secured, "spy").subscribe(f"{prefix}/#")
    connect(open_conns, spy.conn)
    worker = connect(open_conns, Connection(settings_for(secured, "w1", protocol=protocol), "w1"))
    forbidden = [t.dead("default"), t.coordinator, t.worker("w2"), t.inbox("w2"), t.control("w2"),
                 t.rpc, f"{prefix}/anything/else"]
    assert_denied(worker, forbidden, spy, spy.conn, t.status("canary"))
    assert worker.connected  # a denied publish does not cost the connection


def test_worker_cannot_forge_heartbeat_by_choosing_anothers_client_id(
        secured: MosquittoProcess, prefix: str, open_conns: list[Connection]) -> None:
    t = Topics(prefix)
    spy = Recorder(secured, "spy").subscribe(t.all_workers, t.all_status)
    connect(open_conns, spy.conn)
    # Credentials of w1, client id and Last Will of w2.
    forger = Connection(settings_for(secured, "w1"), "w2", will=Will(t.worker("w2"), b'{"state":"offline"}'))
    forger.connect()
    forger.publish(t.worker("w2"), b'{"worker":"w2","state":"online"}', retain=True)
    assert forger.flush(5)
    forger.abort()  # the broker now sends the Last Will, if the ACL allows it
    # Mosquitto sends the Will when it notices the dead socket; a fresh connection from the same
    # user is processed after that, so its canary comes after any Will.
    assert_denied(connect(open_conns, Connection(settings_for(secured, "w1"), "w1-after")), [], spy, spy.conn,
                  t.status("canary"))
    assert t.worker("w2") not in spy.topics()


def test_no_one_reads_another_producers_replies(
        secured: MosquittoProcess, prefix: str, open_conns: list[Connection]) -> None:
    t = Topics(prefix)
    spy_conn = connect(open_conns, Connection(settings_for(secured, "spy"), "spy-pub"))
    owner = Recorder(secured, "p1", client_id="p1").subscribe(t.replies("p1"))
    other_producer = Recorder(secured, "p2", client_id="p2").subscribe(t.replies("p1"), f"{prefix}/replies/#",
                                                                      t.all_status)
    worker = Recorder(secured, "w1", client_id="w1").subscribe(t.replies("p1"), f"{prefix}/replies/+",
                                                             t.inbox("w1"))
    monitor = Recorder(secured, "m1", client_id="m1").subscribe(f"{prefix}/#")
    for r in (owner, other_producer, worker, monitor):
        connect(open_conns, r.conn)
    replier = connect(open_conns, Connection(settings_for(secured, "w2"), "w2"))
    replier.publish(t.replies("p1"), b'{"id":"x","state":"succeeded"}')
    assert replier.flush(5)
    wait_until(lambda: t.replies("p1") in owner.topics())
    for intruder, canary in ((other_producer, t.status("c")), (worker, t.inbox("w1")), (monitor, t.errors)):
        assert_denied(replier, [], intruder, spy_conn, canary)
        assert t.replies("p1") not in intruder.topics()


def test_monitor_cannot_publish_anything_but_queries(
        secured: MosquittoProcess, prefix: str, open_conns: list[Connection]) -> None:
    t = Topics(prefix)
    spy = Recorder(secured, "spy").subscribe(f"{prefix}/#")
    connect(open_conns, spy.conn)
    monitor = connect(open_conns, Connection(settings_for(secured, "m1"), "m1"))
    forbidden = [t.tasks("default"), t.status("x"), t.worker("m1"), t.errors, t.coordinator, t.dead("default"),
                 t.rpc, t.rpc_deploy, t.cancel("x")]
    assert_denied(monitor, forbidden, spy, spy.conn, t.status("canary"))


def test_producer_cannot_impersonate_workers_or_coordinator(
        secured: MosquittoProcess, prefix: str, open_conns: list[Connection]) -> None:
    t = Topics(prefix)
    spy = Recorder(secured, "spy").subscribe(f"{prefix}/#")
    connect(open_conns, spy.conn)
    producer = connect(open_conns, Connection(settings_for(secured, "p1"), "p1"))
    forbidden = [t.status("x"), t.worker("w1"), t.coordinator, t.inbox("w1"), t.control("w1"), t.dead("default"),
                 t.rpc, t.rpc_deploy]  # the operator's and the deployer's ops
    assert_denied(producer, forbidden, spy, spy.conn, t.status("canary"))


def test_whole_flow_works_for_correctly_configured_roles(
        secured: MosquittoProcess, prefix: str, open_conns: list[Connection]) -> None:
    t = Topics(prefix)
    app = TaskApp(settings=settings_for(secured, "p1", prefix=prefix), client_id="p1")

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    monitor = Recorder(secured, "m1", client_id="m1").subscribe(t.all_workers, t.all_status)
    connect(open_conns, monitor.conn)
    coordinator = connect(open_conns, Connection(settings_for(secured, "c1"), "c1"))
    worker = Worker(app, worker_id="w1", concurrency=2, settings=settings_for(secured, "w1", prefix=prefix))
    with worker, app:
        assert add.submit(2, 3).result(timeout=10) == 5
        # The coordinator announces itself and hands a task to w1's inbox; both reach the worker.
        coordinator.publish(t.coordinator, b'{"state":"online","ts":0}', retain=True)
        wait_until(lambda: worker.coordinator_online, message="worker never saw the coordinator")
        handle_id = "inbox-task-1"
        coordinator.publish(t.inbox("w1"), b'{"id":"%s","task":"add","args":[4,5]}' % handle_id.encode())
        wait_until(lambda: t.status(handle_id) in monitor.topics(), message="inbox task never ran")
        wait_until(lambda: t.worker("w1") in monitor.topics(), message="the monitor saw no heartbeat")
    coordinator.publish(t.coordinator, b"", retain=True)


def test_max_queued_messages_0_disconnects_on_acl_denial(
        mosquitto_factory: MosquittoFactory, tmp_path: Path, prefix: str) -> None:
    """Why the shipped mosquitto.conf says 10000000, not 0: with 0, Mosquitto 2.0.11 drops the
    connection of a client after each publish its ACL denies. If this starts failing, the broker
    was fixed and 0 may come back."""
    pw, acl = tmp_path / "passwd", tmp_path / "acl"
    install(generate("worker", "w1", password_of("w1"), prefix=prefix), password_file=pw, acl_file=acl)
    common = [f"password_file {pw}", f"acl_file {acl}", "allow_anonymous false"]
    for value, expect_drop in (("0", True), ("10000000", False)):
        broker = mosquitto_factory([*common, f"max_queued_messages {value}"])
        drops: list[str] = []
        conn = Connection(settings_for(broker, "w1"), "w1", on_disconnect=drops.append).connect()
        for i in range(3):
            conn.publish(f"{prefix}/dead/{i}", b"x")
        conn.flush(5)
        conn.publish(f"{prefix}/workers/w1", b"allowed")
        conn.flush(5)
        conn.close(1.0)
        dropped = any(d != "Normal disconnection" for d in drops)
        assert dropped is expect_drop, (value, drops)


def test_acl_command_prints_or_installs(tmp_path: Path) -> None:
    from mqtt_tasks.acl import acl_command

    text = acl_command("worker", "w1", "pw", prefix="P", queues=["q1"])
    assert "w1:$7$101$" in text and "user w1" in text and "topic readwrite P/tasks/q1" in text
    done = acl_command("worker", "w1", "pw", password_file=tmp_path / "pw", acl_file=tmp_path / "acl")
    assert "reload Mosquitto" in done and (tmp_path / "acl").read_text().count("user w1") == 1
    with pytest.raises(ConfigError, match="both"):
        acl_command("worker", "w1", "pw", password_file=tmp_path / "pw")


def test_acl_cli_command(tmp_path: Path) -> None:
    """`mqtt-tasks acl` prints the entries, writes both files, and refuses half a pair clearly."""
    from click.testing import CliRunner

    from mqtt_tasks.cli import cli

    runner = CliRunner()
    printed = runner.invoke(cli, ["acl", "worker", "w1", "--password", "s3cret-s3cret"])
    assert printed.exit_code == 0, printed.output
    assert "w1:$7$" in printed.output and "user w1" in printed.output
    deployer = runner.invoke(cli, ["acl", "deployer", "d1", "--password", "s3cret-s3cret", "--prefix", "P"])
    assert deployer.exit_code == 0 and "topic write P/rpc/deploy\n" in deployer.output
    assert "topic read P/replies/d1/+" in deployer.output and "deploy/bundle" not in deployer.output
    assert "rpc/coordinator" not in deployer.output
    listed = runner.invoke(cli, ["acl", "--help"])
    assert all(role in listed.output for role in ROLES), listed.output
    pw, acl_path = tmp_path / "passwd", tmp_path / "acl"
    written = runner.invoke(cli, ["acl", "producer", "p1", "--password", "pw-pw-pw-pw",
                                  "--password-file", str(pw), "--acl-file", str(acl_path)])
    assert written.exit_code == 0, written.output
    assert pw.read_text().startswith("p1:$7$") and "user p1" in acl_path.read_text()
    half = runner.invoke(cli, ["acl", "worker", "w2", "--password", "x" * 12, "--acl-file", str(acl_path)])
    assert half.exit_code == 2 and "Traceback" not in half.output



def test_a_worker_whose_shared_subscription_is_refused_fails_loudly(
        monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
    """A broker that refuses the SUBACK of the worker's task filter (an ACL that denies it: EMQX,
    HiveMQ and amqtt's topic ACL plugin answer 0x80). The worker used to log it, report ready and
    wait for tasks that could never come. Mosquitto 2.0.11's acl_file grants such a SUBACK and
    filters deliveries instead: docs/security.md says how to check a worker's ACL there."""
    from mqtt_tasks import broker as embedded

    refused_filter = f"$share/workers/{prefix}/tasks/default"
    granting = embedded._SharedSubscriptionBroker.add_subscription

    async def add_subscription(self: object, subscription: tuple[str, int], session: object) -> int:
        if subscription[0] == refused_filter:
            return 0x80
        return await granting(self, subscription, session)  # type: ignore[arg-type]

    monkeypatch.setattr(embedded._SharedSubscriptionBroker, "add_subscription", add_subscription)
    with embedded.EmbeddedBroker() as broker:
        settings = Settings.from_url(broker.url, prefix=prefix)
        app = TaskApp(settings=settings)
        worker = Worker(app, worker_id="w9", queues=["images", "default"], settings=settings)
        with pytest.raises(ConnectError, match=rf"refused the subscription to \$share/workers/{prefix}/tasks/default"):
            worker.start()
        worker.stop()
        allowed = Worker(app, worker_id="w9", queues=["images"], settings=settings)
        with allowed:  # the same worker on the queue it is granted starts as before
            assert allowed.snapshot().state == "online"
        app.close()
def test_producer_and_coordinator_may_exchange_receipts_and_re_sends() -> None:
    t = Topics("P")
    producer = {(r.access, r.topic) for r in role_rules("producer", "p1", prefix="P", queues=["default"])}
    coordinator = {(r.access, r.topic) for r in role_rules("coordinator", "c1", prefix="P")}
    assert {("write", t.record("default")), ("read", "P/replies/p1/+"), ("read", t.coordinator)} <= producer
    assert {("read", t.all_record), ("write", "P/replies/+/+")} <= coordinator  # receipts; answers to users
    assert ("readwrite", t.coordinator) in coordinator  # several coordinators: the leader reads others' presence


# -- the deployer role (docs/deploy.md, docs/security.md "Deploying code") ----------------------------

def test_a_rollout_works_through_the_roles_and_no_one_else_reaches_a_workers_bundle_topic(
        secured: MosquittoProcess, prefix: str, open_conns: list[Connection], tmp_path: Path) -> None:
    from mqtt_tasks.coordinator import Coordinator
    from mqtt_tasks.deploy import client, keys
    from tests import deploy_tasks

    t = Topics(prefix)
    keys.keygen(str(tmp_path / "d.key"), str(tmp_path / "d.pub"))
    module = tmp_path / "which_tasks.py"
    module.write_text(deploy_tasks.BUNDLE.format(version="2"))
    app = TaskApp(settings=settings_for(secured, "w1", prefix=prefix), client_id="w1-app")
    app.registry.update(deploy_tasks.app.registry)
    worker = Worker(app, worker_id="w1", settings=settings_for(secured, "w1", prefix=prefix), heartbeat_s=0.5,
                    deploy=(str(tmp_path / "d.pub"), str(tmp_path / "deploy-w1")))
    coordinator = Coordinator(settings_for(secured, "c1", prefix=prefix), client_id="c1")
    deployer = settings_for(secured, "d1", prefix=prefix)
    with coordinator, worker:
        wait_until(lambda: "w1" in coordinator.workers(), 10, message="the coordinator never saw w1")
        signed = client.sign_module(str(module), version="2", to="all", private_key_path=str(tmp_path / "d.key"))
        started = client.start_rollout(deployer, signed)
        wait_until(lambda: client.rollout_status(deployer, started["id"])["state"] == "completed", 10)
        assert worker._deploys is not None and worker._deploys.versions() == {"which_tasks": "2"}
        # neither the deployer nor another worker can put a bundle on w1's topic or speak for w1
        spy = Recorder(secured, "spy", client_id="spy-2").subscribe(t.deploy_bundle("w1"), t.deploy_status("w1"),
                                                                    t.status("+"))
        connect(open_conns, spy.conn)
        wait_until(lambda: t.deploy_status("w1") in spy.topics(), message="w1's retained report never came")
        spy.messages.clear()  # that one was w1's own (retained); from here on nothing may arrive
        for user, forbidden in (("d1", [t.deploy_bundle("w1"), t.tasks("default")]),
                                ("w2", [t.deploy_bundle("w1"), t.deploy_status("w1")])):
            publisher = connect(open_conns, Connection(settings_for(secured, user), f"{user}-x"))
            assert_denied(publisher, forbidden, spy, spy.conn, t.status(f"canary-{user}"))
