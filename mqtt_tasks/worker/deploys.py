"""With ``--accept-deploys``: take signed code bundles, check them, and swap tasks in between tasks.

Built on these facts (docs/deploy.md; the bundle format: ``mqtt_tasks.deploy.bundle``):

- The network thread only hands a bundle to this part's thread (``mqtt-worker-deploy``); checking,
  running the module's top level and writing the file happen there, never on paho's thread.
- A bundle is refused, with a ``failed`` report and one report on ``P/errors``, when it is
  malformed, does not verify with this worker's public key, is not for this worker (its signed
  selector), or has a serial below the one this worker runs for the module (a replay, a downgrade).
- The source runs as a fresh module object; it must define ``app``, a ``TaskApp`` whose tasks are
  on queues this worker takes. Its tasks then replace the registry's entries of the same name, one
  dict assignment each: the dispatcher looks a task up when it starts it, so a task that started
  before the swap finishes on the old code and the next one runs the new (``Dispatcher._start``).
- The bundle is written (temporary file, fsync, rename) to ``DIR/{module}.json`` before the swap:
  a worker that restarts verifies it again with its key and applies it before it takes a task, so
  it keeps the version it applied and its serial (replay protection survives the restart). It
  says what it runs in every heartbeat (``code``) and every report (``running``).
- Reports go to ``P/deploy/status/{worker_id}``, retained: ``downloaded``, ``verified``,
  ``applied`` or ``failed`` with the reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import threading
import time
import types
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, MqttTasksError, SignatureError
from ..protocol import codec, events

if TYPE_CHECKING:
    from ..app import TaskApp, TaskDef
    from ..protocol.deploys import Bundle
    from ..protocol.topics import Topics
    from ..transport import Connection, Message

log = logging.getLogger(__name__)


class ApplyError(MqttTasksError):
    """The bundle verified, but its module cannot become this worker's tasks."""


@dataclass
class Applied:
    version: str
    serial: int
    sha256: str


class Deploys:
    """The deploy key, the directory of applied bundles, and the thread that applies new ones."""

    def __init__(self, worker_id: str, labels: tuple[str, ...], queues: list[str], app: TaskApp, topics: Topics,
                 conn: Connection, key_path: str, directory: str) -> None:
        from ..deploy import keys

        self._worker_id, self._labels, self._queues, self._app = worker_id, labels, queues, app
        self._conn = conn
        self._key = keys.load_public(key_path)
        self.directory = directory
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot use the deploy directory {directory}: {exc.strerror}") from None
        self.topic = topics.deploy_bundle(worker_id)
        self._status_topic = topics.deploy_status(worker_id)
        self._errors_topic = topics.errors
        self._inbox: queue.Queue[bytes | None] = queue.Queue(maxsize=64)
        self._lock = threading.Lock()
        self.applied: dict[str, Applied] = {}
        self._held: list[tuple[str, bytes, bool]] | None = None  # while restoring, before the connection is up

    # -- start-up ----------------------------------------------------------------------
    def restore(self) -> None:
        """Apply the bundles kept in the directory, before the worker connects and takes a task;
        their reports wait for ``announce``."""
        self._held = []
        for name in sorted(os.listdir(self.directory)):
            if name.endswith(".json"):
                with open(os.path.join(self.directory, name), "rb") as source:
                    self._handle(source.read(), restoring=True)

    def announce(self) -> None:
        """Once connected: publish what ``restore`` said."""
        held, self._held = self._held or [], None
        for topic, payload, retain in held:
            self._conn.publish(topic, payload, retain=retain)

    # -- the receive path --------------------------------------------------------------
    def receive(self, message: Message) -> None:
        """Network thread: hand the bundle to the deploy thread."""
        try:
            self._inbox.put_nowait(message.payload)
        except queue.Full:
            self._refused(None, "bundle dropped: 64 bundles already wait to be applied", message.payload)

    def run(self) -> None:
        while (payload := self._inbox.get()) is not None:
            try:
                self._handle(payload)
            except Exception:
                log.exception("worker %s: error applying a bundle", self._worker_id)

    def stop(self) -> None:
        with contextlib.suppress(queue.Full):
            self._inbox.put_nowait(None)

    def versions(self) -> dict[str, str]:
        """Module -> version applied here (the heartbeat's ``code``)."""
        with self._lock:
            return {module: a.version for module, a in sorted(self.applied.items())}

    # -- one bundle --------------------------------------------------------------------
    def _handle(self, payload: bytes, *, restoring: bool = False) -> None:
        from ..deploy import bundle as bundles

        try:
            bundle = bundles.read(payload)
        except SignatureError as exc:
            self._refused(None, str(exc), payload)
            return
        if not restoring:
            self._report(bundle, "downloaded")
        try:
            bundles.verify(bundle, self._key)
            self._check_audience(bundle)
            if not restoring and self._check_fresh(bundle):
                return
        except SignatureError as exc:
            self._refused(bundle, str(exc), payload)
            return
        if not restoring:
            self._report(bundle, "verified")
        try:
            self._apply(bundle, payload, restoring)
        except ApplyError as exc:
            log.warning("worker %s: bundle %s %s not applied: %s", self._worker_id, bundle.manifest.module,
                        bundle.manifest.version, exc)
            self._report(bundle, "failed", str(exc))
            return
        self._report(bundle, "applied", restored=restoring or None)

    def _check_audience(self, bundle: Bundle) -> None:
        from ..deploy.selector import parse

        if not parse(bundle.manifest.to).matches(self._worker_id, self._labels):
            raise SignatureError(f"bundle refused: its signed selector {bundle.manifest.to!r} does not select "
                                 f"worker {self._worker_id}")

    def _check_fresh(self, bundle: Bundle) -> bool:
        """True when it is the bundle applied already (a redelivery: said again); refused when older."""
        m = bundle.manifest
        current = self.applied.get(m.module)
        if current is None or m.serial > current.serial:
            return False
        if m.serial == current.serial and m.sha256 == current.sha256:
            self._report(bundle, "applied")
            return True
        raise SignatureError(f"bundle refused: replay or downgrade: serial {m.serial} of {m.module} {m.version} is "
                             f"not newer than {current.serial} ({current.version}) running here")

    def _apply(self, bundle: Bundle, payload: bytes, restoring: bool) -> None:
        m = bundle.manifest
        module, tasks = self._load(bundle)
        if not restoring:
            self._keep(m.module, payload)
        with self._lock:
            self._app.registry.update(tasks)  # one assignment per task: see the module docstring
            self.applied[m.module] = Applied(m.version, m.serial, m.sha256)
            sys.modules[m.module] = module
        log.info("worker %s: %s %s applied (%d task(s): %s)%s", self._worker_id, m.module, m.version, len(tasks),
                 ", ".join(sorted(tasks)), " from the deploy directory" if restoring else "")

    def _load(self, bundle: Bundle) -> tuple[types.ModuleType, dict[str, TaskDef[Any]]]:
        """Run the module's top level; its ``app``'s tasks, bound to this worker's app."""
        from ..app import TaskApp, TaskDef
        from ..deploy.bundle import check_module_name

        m = bundle.manifest
        try:
            check_module_name(m.module)
        except ConfigError as exc:
            raise ApplyError(str(exc)) from None
        module = types.ModuleType(m.module)
        module.__file__ = f"<bundle {m.module} {m.version}>"
        try:
            exec(compile(bundle.source, module.__file__, "exec"), module.__dict__)  # noqa: S102 - the signed code
        except (Exception, SystemExit) as exc:
            raise ApplyError(f"the module failed to load: {type(exc).__name__}: {exc}") from exc
        app = module.__dict__.get("app")
        if not isinstance(app, TaskApp) or not app.registry:
            raise ApplyError("the module defines no TaskApp named 'app' with tasks")
        for tdef in app.registry.values():
            if tdef.options.queue not in self._queues:
                raise ApplyError(f"task {tdef.name} is on queue {tdef.options.queue}, which this worker does not take")
        return module, {name: TaskDef(self._app, t.fn, name, t.options) for name, t in app.registry.items()}

    def _keep(self, module: str, payload: bytes) -> None:
        path = os.path.join(self.directory, f"{module}.json")
        try:
            with open(path + ".tmp", "wb") as out:
                out.write(payload)
                out.flush()
                os.fsync(out.fileno())
            os.replace(path + ".tmp", path)
        except OSError as exc:
            raise ApplyError(f"cannot keep the bundle in {self.directory}: {exc.strerror}") from exc

    # -- reports -----------------------------------------------------------------------
    def _refused(self, bundle: Bundle | None, reason: str, payload: bytes) -> None:
        log.warning("worker %s: %s", self._worker_id, reason)
        report = events.error_report(component="worker", source=self._worker_id, reason=reason, ts=time.time(),
                                     topic=self.topic, payload=payload)
        self._publish(self._errors_topic, codec.encode(report), retain=False)
        self._report(bundle, "failed", reason)

    def _report(self, bundle: Bundle | None, state: str, reason: str | None = None,
                restored: bool | None = None) -> None:
        m = bundle.manifest if bundle is not None else None
        report = {"worker": self._worker_id, "state": state, "reason": reason, "running": self.versions(),
                  "restored": restored, "ts": time.time()}
        if m is not None:
            report.update(rollout=m.rollout, module=m.module, version=m.version, serial=m.serial)
        self._publish(self._status_topic, codec.encode({k: v for k, v in report.items() if v is not None}), retain=True)

    def _publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        if self._held is not None:
            self._held.append((topic, payload, retain))
        else:
            self._conn.publish(topic, payload, retain=retain)
