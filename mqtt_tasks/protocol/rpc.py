"""Which of the coordinator's rpc topics takes which op, and where the answer to a query comes back.

Pure, no I/O. Three topics (docs/protocol.md, docs/security.md)::

    P/rpc/query        read-only queries: status, tasks, stats, result, schedule.list, deploy.status
    P/rpc/deploy       the deploy.* ops of a rollout: start (a rollback too), status, pause, resume
    P/rpc/coordinator  every op: the operator's changing ops (retry, purge, schedule.put, schedule.rm),
                       and everything a client of an earlier release sends there (the wire contract)

So a broker ACL can give each role the ops it needs and no more: producers and monitors write
``P/rpc/query`` only, the deployer ``P/rpc/deploy`` only, the operator ``P/rpc/coordinator``. An op
sent on a topic that does not take it is refused with an answer naming the topic to use; it is
never executed.

Reply topics: a client whose settings carry a username asks from the client id
``{username}-{kind}-{random}`` and reads the answer on ``P/replies/{username}/{kind}-{random}``:
under the user's own subtree, which its role's ACL names, and with a client id that never takes
over the session of another client of the same user. Without a username, as before: client id
``mqtt-tasks-{kind}-{random}``, answers on ``P/replies/{client id}``. A producer (``TaskApp``
without an explicit ``client_id``) is such a client of kind ``p``, long-lived, and reads the
coordinator's receipts on its reply topic + ``/receipts`` (``receipts_topic``).
"""

from __future__ import annotations

from .topics import Topics

READ_ONLY_OPS = ("status", "tasks", "stats", "result", "schedule.list", "deploy.status")
"""The ops that change nothing: taken on every rpc topic but the deploy one (there: ``deploy.status``)."""

DEPLOY_PREFIX = "deploy."


def topic_for(topics: Topics, op: str) -> str:
    """The narrowest topic that takes ``op``: what a client of this release sends it on."""
    if op.startswith(DEPLOY_PREFIX):
        return topics.rpc_deploy
    if op in READ_ONLY_OPS:
        return topics.rpc_query
    return topics.rpc


def is_rpc_topic(topics: Topics, topic: str) -> bool:
    return topic in (topics.rpc, topics.rpc_query, topics.rpc_deploy)


def refusal(topics: Topics, topic: str, op: object) -> str | None:
    """Why ``op`` may not be executed when it arrived on ``topic``, or None when it may."""
    name = op if isinstance(op, str) else repr(op)
    if topic == topics.rpc_query and op not in READ_ONLY_OPS:
        return (f"op {name!r} is not a read-only query: {topic} takes only {', '.join(READ_ONLY_OPS)}; "
                f"send it on {topic_for(topics, name)}")
    if topic == topics.rpc_deploy and not name.startswith(DEPLOY_PREFIX):
        return f"op {name!r} is not a deploy op: {topic} takes only deploy.*; send it on {topic_for(topics, name)}"
    return None


def reply_address(topics: Topics, username: str | None, kind: str, token: str) -> tuple[str, str]:
    """``(client id, reply topic)`` of a short-lived client that asks and waits for one answer;
    ``token`` is random and unique to the call."""
    if username:
        return f"{username}-{kind}-{token}", f"{topics.replies(username)}/{kind}-{token}"
    client_id = f"mqtt-tasks-{kind}-{token}"
    return client_id, topics.replies(client_id)


def producer_address(topics: Topics, username: str | None, client_id: str | None, token: str) -> tuple[str, str]:
    """``(client id, reply topic)`` of a producer (``TaskApp``): ``P/replies/{client_id}`` when it is
    given one, else ``reply_address`` of kind ``p``."""
    if client_id:
        return client_id, topics.replies(client_id)
    return reply_address(topics, username, "p", token)


def receipts_topic(reply_topic: str) -> str:
    """Where the coordinator confirms the tasks of the producer that reads ``reply_topic`` (receipts.py)."""
    return reply_topic + "/receipts"
