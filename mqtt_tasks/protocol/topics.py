"""Topic names of the wire contract: build them, parse them, validate ids.

Pure functions, no I/O. ``P`` is the prefix (default ``mqtt-tasks``)::

    P/tasks/{queue}          tasks; workers take them as $share/{group}/P/tasks/{queue}
    P/status/{task_id}       status events
    P/workers/{worker_id}    retained worker state (heartbeat, Last Will ``offline``)
    P/dead/{queue}           dead letters
    P/errors                 reports of rejected input
    P/inbox/{worker_id}      (extension) tasks the coordinator hands to one worker
    P/control/{worker_id}    (extension) commands to one worker, e.g. stop a stale attempt
    P/coordinator            (extension) retained coordinator presence
    P/rpc/coordinator        (extension) every op to the coordinator; the operator's topic (protocol/rpc.py)
    P/rpc/query              (extension) read-only queries to the coordinator (status, tasks, stats, ...)
    P/rpc/deploy             (extension) the deploy.* ops to the coordinator (docs/deploy.md)
    P/record/{queue}         (extension) tasks for the coordinator alone: a producer's re-send
    P/replies/{client_id}    (extension) the reply topic of a producer without a username, or with a client id
    P/replies/{username}/{unique}  (extension) the reply topic of a user's producer or query client (protocol/rpc.py)
    P/probe/{worker_id}      (extension) a worker's start-up check that the broker routes $share
    P/replies/.../receipts   (extension) the coordinator's receipts to the producer of that reply topic
    P/cancel/{task_id}       (extension) a request to cancel a task: the coordinator and every worker read it
    P/workflows              (extension) chains, groups, chords and sagas for the coordinator (docs/workflows.md)
    P/routed/{queue}/{labels}  (extension) a task that requires labels, without a coordinator: workers
                             that have them all take it as $share/{group}/P/routed/{queue}/{labels}
                             (labels sorted, joined by ``,``; protocol/labels.py)
    P/deploy/bundle/{worker_id}  (extension) a signed code bundle for one worker (docs/deploy.md)
    P/deploy/status/{worker_id}  (extension) retained: that worker's last word on a bundle
"""

from __future__ import annotations

import re

from ..errors import ConfigError

DEFAULT_PREFIX = "mqtt-tasks"
DEFAULT_QUEUE = "default"
DEFAULT_GROUP = "workers"

ID_PATTERN = r"^[A-Za-z0-9_.:\-]{1,128}$"
_ID_RE = re.compile(ID_PATTERN)
# Queue, worker and group names are single topic levels of the same alphabet.
_NAME_RE = _ID_RE
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.:\-]+(/[A-Za-z0-9_.:\-]+)*$")


def is_valid_id(value: str) -> bool:
    """A task id: 1-128 characters of ``A-Z a-z 0-9 _ . : -`` (always topic-safe)."""
    return isinstance(value, str) and _ID_RE.match(value) is not None


def check_name(kind: str, value: str) -> str:
    """Validate a queue, worker or group name; raise ``ConfigError`` (a ``ValueError``) with a clear reason."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ConfigError(f"invalid {kind} {value!r}: use 1-128 characters of A-Z a-z 0-9 _ . : -")
    return value


def check_prefix(value: str) -> str:
    if not isinstance(value, str) or not _PREFIX_RE.match(value) or value.startswith("$"):
        raise ConfigError(
            f"invalid topic prefix {value!r}: topic levels of A-Z a-z 0-9 _ . : - separated by '/'"
        )
    return value


class Topics:
    """All topics for one prefix. Cheap to build; attributes are plain strings."""

    __slots__ = ("prefix", "tasks_root", "status_root", "workers_root", "dead_root", "errors",
                 "inbox_root", "control_root", "coordinator", "rpc", "rpc_query", "rpc_deploy", "replies_root",
                 "probe_root", "record_root", "cancel_root", "workflows", "routed_root", "deploy_bundle_root",
                 "deploy_status_root")

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = check_prefix(prefix)
        self.tasks_root = f"{prefix}/tasks/"
        self.status_root = f"{prefix}/status/"
        self.workers_root = f"{prefix}/workers/"
        self.dead_root = f"{prefix}/dead/"
        self.errors = f"{prefix}/errors"
        self.inbox_root = f"{prefix}/inbox/"
        self.control_root = f"{prefix}/control/"
        self.coordinator = f"{prefix}/coordinator"
        self.rpc = f"{prefix}/rpc/coordinator"
        self.rpc_query = f"{prefix}/rpc/query"
        self.rpc_deploy = f"{prefix}/rpc/deploy"
        self.replies_root = f"{prefix}/replies/"
        self.probe_root = f"{prefix}/probe/"
        self.record_root = f"{prefix}/record/"
        self.cancel_root = f"{prefix}/cancel/"
        self.workflows = f"{prefix}/workflows"
        self.routed_root = f"{prefix}/routed/"
        self.deploy_bundle_root = f"{prefix}/deploy/bundle/"
        self.deploy_status_root = f"{prefix}/deploy/status/"

    # -- builders -------------------------------------------------------------
    def tasks(self, queue: str) -> str:
        return self.tasks_root + queue

    def shared_tasks(self, group: str, queue: str) -> str:
        return f"$share/{group}/{self.tasks_root}{queue}"

    def status(self, task_id: str) -> str:
        return self.status_root + task_id

    def worker(self, worker_id: str) -> str:
        return self.workers_root + worker_id

    def dead(self, queue: str) -> str:
        return self.dead_root + queue

    def inbox(self, worker_id: str) -> str:
        return self.inbox_root + worker_id

    def control(self, worker_id: str) -> str:
        return self.control_root + worker_id

    def replies(self, client_id: str) -> str:
        return self.replies_root + client_id

    def probe(self, worker_id: str) -> str:
        return self.probe_root + worker_id

    def record(self, queue: str) -> str:
        return self.record_root + queue

    def cancel(self, task_id: str) -> str:
        return self.cancel_root + task_id

    def routed(self, queue: str, level: str) -> str:
        """``P/routed/{queue}/{level}``: ``level`` is ``labels.routed_level`` of the required labels."""
        return f"{self.routed_root}{queue}/{level}"

    def shared_routed(self, group: str, queue: str, level: str) -> str:
        return f"$share/{group}/{self.routed(queue, level)}"

    def deploy_bundle(self, worker_id: str) -> str:
        return self.deploy_bundle_root + worker_id

    def deploy_status(self, worker_id: str) -> str:
        return self.deploy_status_root + worker_id

    # -- wildcard filters -------------------------------------------------------
    @property
    def all_tasks(self) -> str:
        return self.tasks_root + "+"

    @property
    def all_status(self) -> str:
        return self.status_root + "+"

    @property
    def all_record(self) -> str:
        return self.record_root + "+"

    @property
    def all_workers(self) -> str:
        return self.workers_root + "+"

    @property
    def all_cancel(self) -> str:
        return self.cancel_root + "+"

    @property
    def all_deploy_status(self) -> str:
        return self.deploy_status_root + "+"

    # -- parsers: return the last level, or None when the topic is not of that kind --
    def queue_of(self, topic: str) -> str | None:
        """The queue of a task topic: ``P/tasks/{queue}``, ``P/record/{queue}`` or
        ``P/routed/{queue}/{labels}``."""
        return _tail(topic, self.tasks_root) or _tail(topic, self.record_root) or self._routed_queue(topic)

    def _routed_queue(self, topic: str) -> str | None:
        if not topic.startswith(self.routed_root):
            return None
        queue, _, level = topic[len(self.routed_root):].partition("/")
        return queue if queue and level and "/" not in level else None

    def task_id_of_status(self, topic: str) -> str | None:
        return _tail(topic, self.status_root)

    def worker_of(self, topic: str) -> str | None:
        return _tail(topic, self.workers_root)

    def task_id_of_cancel(self, topic: str) -> str | None:
        return _tail(topic, self.cancel_root)

    def worker_of_deploy_status(self, topic: str) -> str | None:
        return _tail(topic, self.deploy_status_root)


def _tail(topic: str, root: str) -> str | None:
    if not topic.startswith(root):
        return None
    rest = topic[len(root):]
    return rest if rest and "/" not in rest else None
