"""Least-privilege Mosquitto credentials for the roles: producer, worker, coordinator, monitor, deployer,
operator, dashboard.

``generate(role, ident, password)`` returns a password-file line and an ACL block; ``install``
writes them into a Mosquitto ``password_file`` and ``acl_file`` (replacing an earlier entry for
the same user). Pure Python: the password hash is Mosquitto 2.0's own ``$7$`` format
(PBKDF2-HMAC-SHA512, 101 iterations, 12-byte salt), so ``mosquitto_passwd`` need not be
installed where credentials are made.

The identity is the MQTT *username*, and the ACL names it literally (``user w1`` /
``topic write P/workers/w1``) rather than through ``%c`` / ``%u`` patterns, for two reasons
measured on Mosquitto 2.0.11 (tests/test_security_acl.py):

- ``pattern`` lines apply to every client, whatever its user, so a pattern cannot say "workers
  may heartbeat on ``P/workers/%u``" without granting the same to producers and monitors;
- ``%c`` is the client id, which the client chooses: with credentials for worker ``w1`` a client
  could connect as ``w2`` and publish ``w2``'s heartbeat. The username is proven by the password.

So a worker's ``--worker-id`` must equal its username. A user's producers (``TaskApp`` without a
``client_id``) and short-lived query clients read their replies, receipts and answers under
``P/replies/{username}/`` (``protocol.rpc.reply_address``), each from a client id of its own; a
producer whose ``client_id`` is the username reads ``P/replies/{username}`` as before. Each role
writes only the rpc topics of the ops it may ask (``protocol.rpc``): producers and monitors
``P/rpc/query``, the operator ``P/rpc/coordinator``, the deployer ``P/rpc/deploy``. Mosquitto
checks a ``$share/{group}/T`` subscription against ``T``, so a worker's read right on
``P/tasks/q`` covers its shared subscription.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import ConfigError
from .protocol import rpc
from .protocol.topics import DEFAULT_PREFIX, Topics, check_name

ROLES = ("producer", "worker", "coordinator", "monitor", "deployer", "operator", "dashboard")
Access = Literal["read", "write", "readwrite"]

PBKDF2_ITERATIONS = 101  # mosquitto_passwd 2.0's default
SALT_BYTES = 12
_USER_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")


@dataclass(frozen=True, slots=True)
class Rule:
    """One ACL line: ``topic {access} {topic}``."""

    access: Access
    topic: str

    def line(self) -> str:
        return f"topic {self.access} {self.topic}"


@dataclass(frozen=True, slots=True)
class Credentials:
    """What ``generate`` returns: one password-file line and one ACL block."""

    role: str
    username: str
    password_line: str
    acl_block: str


def role_rules(role: str, ident: str, *, prefix: str = DEFAULT_PREFIX,
               queues: list[str] | None = None) -> list[Rule]:
    """The topics ``role`` needs, for the client ``ident``; ``queues`` narrows task topics (default all)."""
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    check_user(ident)
    t = Topics(prefix)
    if role in ("producer", "dashboard"):
        return _producer_rules(role, ident, t, queues)
    if role == "worker":
        return _worker_rules(ident, t, queues)
    if role == "coordinator":
        return _coordinator_rules(t)
    return _onlooker_rules(role, ident, t)


def _answers(ident: str, t: Topics) -> Rule:
    """Where a user's clients read their replies and the coordinator's answers: ``P/replies/{id}/{unique}``
    (``protocol.rpc.reply_address``); it covers the receipts topic ``P/replies/{id}/receipts`` of a
    producer whose client id is the username too."""
    return Rule("read", t.replies(ident) + "/+")


def _producer_rules(role: str, ident: str, t: Topics, queues: list[str] | None) -> list[Rule]:
    """A producer; the dashboard is one that also reads the live view (workers, every task) and may
    ask for a retry (``P/rpc/coordinator``)."""
    rules = [*(Rule("write", q) for q in _queue_topics(t, queues)),
             Rule("read", t.replies(ident)),  # TaskApp(client_id=username), as in earlier releases
             _answers(ident, t),  # its TaskApps' replies (P/replies/{id}/p-{random}), the answers to queries
             Rule("read", rpc.receipts_topic(t.replies(ident) + "/+")),  # and those TaskApps' receipts
             Rule("read", t.coordinator),  # P/coordinator, receipts, P/record: keep tasks until it has them
             Rule("read", t.all_status),
             Rule("write", t.all_cancel),  # handle.cancel(): any task id (docs/scheduling.md)
             Rule("write", t.workflows),  # chains, groups, chords, sagas (docs/workflows.md)
             Rule("write", t.rpc_query)]  # read-only queries: status, tasks, stats, result (protocol/rpc.py)
    if role == "dashboard":
        rules += [Rule("read", t.all_workers), Rule("read", t.all_tasks),  # the live view (web/monitor.py)
                  Rule("write", t.rpc)]  # retry (its UI's one changing op; the operator's topic)
    return rules


def _queue_topics(t: Topics, queues: list[str] | None) -> list[str]:
    """The topics a producer submits on: ``P/tasks``, ``P/record`` (re-sends) and ``P/routed``
    (docs/routing.md), of the queues named (default all)."""
    if not queues:
        return [t.all_tasks, t.all_record, t.routed("+", "+")]
    names = [check_name("queue", q) for q in queues]
    return [*(t.tasks(q) for q in names), *(t.record(q) for q in names), *(t.routed(q, "+") for q in names)]


def _worker_rules(ident: str, t: Topics, queues: list[str] | None) -> list[Rule]:
    task_topics = [t.tasks(check_name("queue", q)) for q in queues] if queues else [t.all_tasks]
    routed_topics = [t.routed(q, "+") for q in queues] if queues else [t.routed("+", "+")]  # docs/routing.md
    return [*(Rule("readwrite", q) for q in task_topics),  # write: hand-back while draining
            *(Rule("readwrite", q) for q in routed_topics),  # labels; write: forward with no coordinator
            Rule("read", t.inbox(ident)),
            Rule("read", t.control(ident)),
            Rule("read", t.coordinator),
            Rule("read", t.all_cancel),  # cancel requests, which work without a coordinator
            Rule("readwrite", t.probe(ident)),  # the start-up check that the broker routes $share
            Rule("write", t.all_status),
            Rule("write", t.worker(ident)),
            Rule("write", t.errors),
            Rule("write", t.replies_root + "+"),  # final events to a producer named by its client id
            Rule("write", t.replies_root + "+/+"),  # ... and to a user's producer (docs/security.md: why)
            Rule("read", t.deploy_bundle(ident)),  # code bundles for it alone (docs/deploy.md)
            Rule("write", t.deploy_status(ident))]


def _coordinator_rules(t: Topics) -> list[Rule]:
    return [Rule("readwrite", t.all_tasks),
            Rule("read", t.all_record),
            Rule("readwrite", t.all_status),
            Rule("readwrite", t.all_workers),  # read heartbeats; clear a dead worker's retained state
            Rule("read", t.rpc),
            Rule("read", t.rpc_query),
            Rule("read", t.rpc_deploy),
            Rule("read", t.all_cancel),
            Rule("read", t.workflows),
            Rule("write", t.dead_root + "+"),
            Rule("write", t.errors),
            Rule("write", t.inbox_root + "+"),
            Rule("write", t.control_root + "+"),
            Rule("readwrite", t.coordinator),  # read: a group's leader answers a former leader's Will
            Rule("write", t.replies_root + "+"),  # final events, answers to clients of earlier releases
            Rule("write", t.replies_root + "+/+"),  # receipts; answers under a user's subtree (protocol/rpc.py)
            Rule("write", t.replies_root + "+/+/+"),  # receipts to a user's producer (P/replies/{id}/p-{r}/receipts)
            Rule("write", t.deploy_bundle_root + "+"),  # the waves of a rollout
            Rule("read", t.all_deploy_status)]


def _onlooker_rules(role: str, ident: str, t: Topics) -> list[Rule]:
    """The roles that run and submit no tasks: the operator, the deployer and the monitor."""
    if role == "operator":  # the changing ops: retry, purge, schedules (P/rpc/coordinator), cancel
        return [Rule("write", t.rpc),
                Rule("write", t.rpc_query),
                Rule("write", t.all_cancel),
                _answers(ident, t),
                Rule("read", t.coordinator),
                Rule("read", t.all_status),
                Rule("read", t.dead_root + "+"),
                Rule("read", t.errors)]
    if role == "deployer":  # rollouts go through the coordinator: it alone writes the workers' bundle topics
        return [Rule("write", t.rpc_deploy),  # the deploy.* ops and nothing else (protocol/rpc.py)
                _answers(ident, t),
                Rule("read", t.all_deploy_status),
                Rule("read", t.coordinator)]
    return [Rule("read", t.all_status),  # monitor: reads, and asks read-only queries
            Rule("read", t.all_workers),
            Rule("read", t.dead_root + "+"),
            Rule("read", t.errors),
            Rule("read", t.coordinator),
            Rule("read", t.all_deploy_status),
            Rule("write", t.rpc_query),
            _answers(ident, t)]


def check_user(ident: str) -> str:
    """A username usable as a topic level and a worker id (the id alphabet of the protocol)."""
    if not isinstance(ident, str) or not _USER_RE.match(ident):
        raise ConfigError(f"invalid id {ident!r}: use 1-128 characters of A-Z a-z 0-9 _ . : -")
    return ident


def acl_block(role: str, ident: str, *, prefix: str = DEFAULT_PREFIX, queues: list[str] | None = None) -> str:
    """The ``acl_file`` block for one user: a comment naming the role, ``user``, its ``topic`` lines."""
    rules = role_rules(role, ident, prefix=prefix, queues=queues)
    lines = [f"# mqtt-tasks {role} {ident} (prefix {prefix})", f"user {ident}", *(r.line() for r in rules)]
    return "\n".join(lines) + "\n"


def password_entry(username: str, password: str, *, salt: bytes | None = None,
                   iterations: int = PBKDF2_ITERATIONS) -> str:
    """A Mosquitto 2.0 password-file line ``user:$7$iter$salt$hash`` (PBKDF2-HMAC-SHA512)."""
    check_user(username)
    if not password:
        raise ConfigError("the password must not be empty")
    salt = salt if salt is not None else os.urandom(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"{username}:$7${iterations}${_b64(salt)}${_b64(digest)}"


def verify_password(line: str, password: str) -> bool:
    """Whether ``password`` matches a ``$7$`` password-file line (for tests and ``doctor``-style checks)."""
    try:
        _user, rest = line.strip().split(":", 1)
        _, kind, iterations, salt, digest = rest.split("$")
    except ValueError:
        return False
    if kind != "7":
        return False
    actual = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(iterations))
    return hmac.compare_digest(_b64(actual), digest)


def generate(role: str, ident: str, password: str, *, prefix: str = DEFAULT_PREFIX,
             queues: list[str] | None = None) -> Credentials:
    """Password line and ACL block for ``ident`` acting as ``role``."""
    return Credentials(role, ident, password_entry(ident, password),
                       acl_block(role, ident, prefix=prefix, queues=queues))


def install(creds: Credentials, *, password_file: Path | str, acl_file: Path | str) -> None:
    """Add (or replace) the user's entry in both files; each file is rewritten atomically.

    Mosquitto re-reads both files on SIGHUP (``systemctl reload mosquitto``).
    """
    pw_path, acl_path = Path(password_file), Path(acl_file)
    pw_lines = [ln for ln in _read(pw_path).splitlines() if ln.split(":", 1)[0] != creds.username]
    _write_atomic(pw_path, "\n".join([*pw_lines, creds.password_line]) + "\n", mode=0o600)
    blocks = [b for b in split_acl(_read(acl_path)) if _block_user(b) != creds.username]
    _write_atomic(acl_path, "\n".join(b.rstrip("\n") + "\n" for b in [*blocks, creds.acl_block]), mode=0o644)


def acl_command(role: str, ident: str, password: str, *, prefix: str = DEFAULT_PREFIX,
                queues: list[str] | None = None, password_file: Path | str | None = None,
                acl_file: Path | str | None = None) -> str:
    """What ``mqtt-tasks acl`` does: install into both files, or return the entries to paste."""
    creds = generate(role, ident, password, prefix=prefix, queues=queues)
    if password_file is None and acl_file is None:
        return f"# add to the password_file:\n{creds.password_line}\n\n# add to the acl_file:\n{creds.acl_block}"
    if password_file is None or acl_file is None:
        raise ConfigError("give both --password-file and --acl-file, or neither (to print the entries)")
    install(creds, password_file=password_file, acl_file=acl_file)
    return (f"{role} {ident!r} written to {password_file} and {acl_file}; "
            "reload Mosquitto to apply (systemctl reload mosquitto, or SIGHUP)")


def split_acl(text: str) -> list[str]:
    """Split an acl_file into blocks, each starting at its comments and ``user``/``pattern`` line."""
    blocks: list[list[str]] = [[]]
    for line in text.splitlines():
        word = line.split(maxsplit=1)[0] if line.strip() else ""
        starts = word in ("user", "pattern") or (word.startswith("#") and _has_rules(blocks[-1]))
        if starts and _has_rules(blocks[-1]):
            blocks.append([])
        if word or blocks[-1]:
            blocks[-1].append(line)
    return ["\n".join(b).strip("\n") + "\n" for b in blocks if any(ln.strip() for ln in b)]


def _has_rules(block: list[str]) -> bool:
    return any(ln.split(maxsplit=1)[0] in ("user", "topic", "pattern") for ln in block if ln.strip())


def _block_user(block: str) -> str | None:
    for line in block.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "user":
            return words[1]
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8") if path.exists() else ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None


def _write_atomic(path: Path, text: str, *, mode: int) -> None:
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc} (in {path.parent or '.'})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


__all__ = ["ROLES", "Credentials", "Rule", "acl_block", "acl_command", "check_user", "generate", "install",
           "password_entry", "role_rules", "split_acl", "verify_password"]
