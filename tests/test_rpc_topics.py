"""The coordinator's rpc topics (protocol/rpc.py): which topic takes which op, where answers come
back; then the coordinator on a real broker: read-only queries on ``P/rpc/query``, a changing op
there refused and never executed, every op still taken on ``P/rpc/coordinator`` (the wire contract).
"""

from __future__ import annotations

from typing import Any

import pytest

from mqtt_tasks.config import Settings
from mqtt_tasks.coordinator.queries import exchange
from mqtt_tasks.protocol import events, rpc
from mqtt_tasks.protocol.topics import Topics
from tests.brokers import wait_until
from tests.chaos_tasks import make_app
from tests.coord_helpers import coordinator, settings

T = Topics("P")
CHANGING = ("retry", "purge", "schedule.put", "schedule.rm")
DEPLOY = ("deploy.start", "deploy.pause", "deploy.resume")


def test_each_op_goes_to_the_narrowest_topic_that_takes_it() -> None:
    assert {op: rpc.topic_for(T, op) for op in rpc.READ_ONLY_OPS if not op.startswith("deploy.")} == \
        dict.fromkeys(("status", "tasks", "stats", "result", "schedule.list"), "P/rpc/query")
    assert {rpc.topic_for(T, op) for op in CHANGING} == {"P/rpc/coordinator"}
    assert {rpc.topic_for(T, op) for op in (*DEPLOY, "deploy.status")} == {"P/rpc/deploy"}
    assert rpc.topic_for(T, "no-such-op") == "P/rpc/coordinator"  # the coordinator answers "unknown op"


def test_the_coordinator_topic_takes_every_op() -> None:
    for op in (*rpc.READ_ONLY_OPS, *CHANGING, *DEPLOY, "no-such-op", None, 7):
        assert rpc.refusal(T, T.rpc, op) is None


@pytest.mark.parametrize("op", [*CHANGING, *DEPLOY, "no-such-op", None, 7])
def test_the_query_topic_refuses_what_is_not_read_only_and_names_the_topic_to_use(op: Any) -> None:
    why = rpc.refusal(T, T.rpc_query, op)
    assert why is not None and "not a read-only query" in why
    assert why.endswith("send it on " + rpc.topic_for(T, op if isinstance(op, str) else repr(op)))
    assert rpc.refusal(T, T.rpc_query, "status") is None


def test_the_deploy_topic_takes_deploy_ops_only() -> None:
    for op in (*DEPLOY, "deploy.status"):
        assert rpc.refusal(T, T.rpc_deploy, op) is None
    why = rpc.refusal(T, T.rpc_deploy, "purge")
    assert why is not None and why.endswith("send it on P/rpc/coordinator")
    assert (rpc.refusal(T, T.rpc_deploy, "status") or "").endswith("send it on P/rpc/query")


def test_answers_come_back_under_the_users_own_subtree() -> None:
    client_id, topic = rpc.reply_address(T, "alice", "q", "abc123")
    assert (client_id, topic) == ("alice-q-abc123", "P/replies/alice/q-abc123")
    assert client_id != "alice"  # never the user's long-lived client, whose session it would take over
    assert events.reply_refusal(T, topic) is None  # the coordinator's and the workers' reply guard
    assert rpc.reply_address(T, None, "c", "abc123") == ("mqtt-tasks-c-abc123", "P/replies/mqtt-tasks-c-abc123")


def ask(s: Settings, topic: str, request: dict[str, Any]) -> dict[str, Any]:
    answer = exchange(s, topic, lambda reply_to, correlation: {**request, "reply_to": reply_to,
                                                               "correlation": correlation}, 10.0)
    assert answer is not None, f"no answer on {topic} to {request}"
    return answer


def test_the_coordinator_answers_on_each_topic_what_that_topic_takes(broker_url: str, prefix: str) -> None:
    t, s = Topics(prefix), settings(broker_url, prefix)
    with coordinator(broker_url, prefix) as c, make_app(broker_url, prefix).connect() as app:
        held = app.registry["work"].submit_with(["h"], queue="pq", delay=0.2)
        wait_until(lambda: c.backlog_size == 1, 15)
        refused = ask(s, t.rpc_query, {"op": "purge", "queue": "pq"})
        assert refused == {"ok": False, "correlation": refused["correlation"],
                           "error": f"op 'purge' is not a read-only query: {t.rpc_query} takes only "
                                    f"{', '.join(rpc.READ_ONLY_OPS)}; send it on {t.rpc}"}
        assert ask(s, t.rpc_deploy, {"op": "purge", "queue": "pq"})["ok"] is False
        assert c.backlog_size == 1  # never executed
        for topic in (t.rpc_query, t.rpc):  # a client of an earlier release asks on P/rpc/coordinator
            assert ask(s, topic, {"op": "status", "id": held.id})["task"]["state"] == "backlog"
        deploys = ask(s, t.rpc_deploy, {"op": "deploy.status"})
        assert deploys["ok"] is True and deploys["rollouts"] == []
        assert ask(s, t.rpc, {"op": "purge", "queue": "pq"})["purged"] == 1
        assert ask(s, t.rpc_query, {"op": "status", "id": held.id})["task"]["state"] == "cancelled"
