"""The command-line tools: ``mqtt-worker`` and ``mqtt-tasks``. The only place that configures logging.

Each command parses its options, builds ``Settings``, calls one library function and returns a
named exit code. Errors are one line on stderr, never a traceback: ``MqttTasksError`` maps to
a code (``exit_code_for``); click usage errors keep click's exit 2.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import importlib
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from . import __version__
from .acl import ROLES
from .app import TaskApp, TaskHandle, TaskOptions, check_rate_limit, scheduling_fields
from .config import DEFAULT_DEFER_AFTER, DEFAULT_STARTED_AFTER, ENV_BROKER, Settings
from .errors import (
    ConfigError,
    DecodeError,
    MqttTasksError,
    ResultTimeoutError,
    TaskCancelledError,
    TaskExpiredError,
    TaskFailedError,
    TransportError,
)
from .protocol import codec
from .protocol.labels import MAX_LABELS, MAX_REQUIRED, check_labels
from .protocol.states import ONLINE, PRIORITY_MAX, PRIORITY_MIN, RECORD_STATES, TASK_NAME_PATTERN
from .protocol.topics import DEFAULT_GROUP, DEFAULT_QUEUE, Topics, check_name
from .signals import SignalLatch
from .transport import Connection, Message

if TYPE_CHECKING:
    from .protocol.messages import WorkerState

log = logging.getLogger(__name__)

RET_OK = 0
RET_ERROR = 1  # any other MqttTasksError
RET_USAGE = 2  # bad option, bad JSON, bad MODULE:ATTR, bad settings (click's own code)
RET_CONNECT = 3  # the broker could not be reached, or refused a request (its ACL)
RET_TASK_FAILED = 4  # submit --wait: the task failed, died, was cancelled or expired
RET_TIMEOUT = 5  # submit --wait: no result in time
RET_SUPERVISOR = 6  # --processes: the workers could not be kept running
RET_MISSING_EXTRA = 7  # an optional dependency is not installed
RET_NOT_FOUND = 8  # status: the coordinator has no record of the task
RET_INTERRUPTED = 130

LOG_LEVELS = ("debug", "info", "warning", "error")
ENV_WORKER_BROKER = "MQTT_TASKS_WORKER_BROKER"  # a supervisor's --broker for its children (not user-facing)
WORKERS_QUIET_S = 0.4  # `workers`: stop listening once retained states stop arriving this long


class CLIError(click.ClickException):
    """A one-line error with its own exit code."""

    def __init__(self, message: str, code: int = RET_ERROR) -> None:
        super().__init__(message)
        self.exit_code = code

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


def exit_code_for(exc: MqttTasksError) -> int:
    if isinstance(exc, ConfigError):
        return RET_USAGE
    if isinstance(exc, TransportError):
        return RET_CONNECT
    if isinstance(exc, ResultTimeoutError):
        return RET_TIMEOUT
    if isinstance(exc, TaskFailedError | TaskCancelledError | TaskExpiredError):
        return RET_TASK_FAILED
    if isinstance(exc, LookupError):
        return RET_NOT_FOUND
    return RET_ERROR


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"Error: {' '.join(message.split())}", err=True)
    sys.exit(code)


class _OneLineErrors:
    """Mixin for the top-level command: every error is one line on stderr and a named exit code."""

    def main(self, args: Any = None, prog_name: str | None = None, **extra: Any) -> Any:
        if not extra.pop("standalone_mode", True):
            return super().main(args, prog_name, standalone_mode=False, **extra)  # type: ignore[misc]
        try:
            rv = super().main(args, prog_name, standalone_mode=False, **extra)  # type: ignore[misc]
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            _fail(exc.format_message() + hint, exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            _fail("interrupted", RET_INTERRUPTED)
        except MqttTasksError as exc:
            _fail(str(exc), exit_code_for(exc))
        sys.exit(rv if isinstance(rv, int) else RET_OK)


class _Command(_OneLineErrors, click.Command):  # type: ignore[misc]
    pass


class _Group(_OneLineErrors, click.Group):  # type: ignore[misc]
    pass


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")


# -- shared options ------------------------------------------------------------------------
def _name_callback(kind: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        try:
            if isinstance(value, tuple):
                return tuple(check_name(kind, v) for v in value)
            return value if value is None else check_name(kind, value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return check


def _labels_callback(kind: str, most: int = MAX_LABELS) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def check(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
        try:
            return check_labels(value, most=most, kind=kind)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return check


def broker_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--prefix", help="Topic prefix [default: mqtt-tasks].")(fn)
    return click.option("--broker", metavar="URL",
                        help=f"mqtt://, mqtts://, ws:// or wss:// URL [default: ${ENV_BROKER}, "
                             "else mqtt://127.0.0.1:1883].")(fn)


def load_app(ref: str) -> TaskApp:
    """Import ``MODULE:ATTR`` (the working directory first on sys.path, as ``python -m`` does)."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise CLIError(f"expected MODULE:ATTR (e.g. tasks:app), got {ref!r}", RET_USAGE)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise CLIError(f"cannot import {module_name!r}: no module named {exc.name!r} "
                           f"(run from the directory that contains it, or set PYTHONPATH)", RET_USAGE) from None
        raise CLIError(f"error while importing {module_name!r}: {exc}", RET_USAGE) from None
    except Exception as exc:
        log.debug("importing %s failed", module_name, exc_info=True)
        raise CLIError(f"error while importing {module_name!r}: {type(exc).__name__}: {exc}", RET_USAGE) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CLIError(f"module {module_name!r} has no attribute {attr!r}", RET_USAGE)
        obj = getattr(obj, part)
    if not isinstance(obj, TaskApp):
        raise CLIError(f"{ref} is a {type(obj).__name__}, not a TaskApp", RET_USAGE)
    return obj


# -- mqtt-worker ---------------------------------------------------------------------------
@click.command("worker", cls=_Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("app_ref", metavar="MODULE:ATTR")
@broker_options
@click.option("--queue", "-q", "queues", multiple=True, callback=_name_callback("queue"),
              help="Queue to take tasks from (repeatable) [default: the app's queues].")
@click.option("--concurrency", "-c", type=click.IntRange(min=1), help="Tasks run at once [default: 4 x CPUs, max 32].")
@click.option("--worker-id", callback=_name_callback("worker id"), help="[default: HOST-PID-RANDOM]")
@click.option("--group", default=DEFAULT_GROUP, show_default=True, callback=_name_callback("share group"),
              help="Shared-subscription group.")
@click.option("--heartbeat", type=click.FloatRange(min=0, min_open=True), help="Heartbeat seconds [default: 2].")
@click.option("--grace", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds running tasks get to finish on SIGTERM.")
@click.option("--defer-after", type=click.FloatRange(min=0), default=DEFAULT_DEFER_AFTER, show_default=True,
              help="A task not expected to get a free slot here within this many seconds is handed to the coordinator.")
@click.option("--started-after", type=click.FloatRange(min=0), default=DEFAULT_STARTED_AFTER, show_default=True,
              help="Publish a task's `started` event once it has run this many seconds (0: at once).")
@click.option("--cancel-grace", type=click.FloatRange(min=0), metavar="SECONDS",
              help="A cancelled task that has not stopped after this long is abandoned (its slot stays taken "
                   "until its body returns) [default: 10].")
@click.option("--progress-every", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="At most one `progress` event per task per this many seconds [default: 1].")
@click.option("--label", "labels", multiple=True, callback=_labels_callback("labels"),
              help="A capability label of this worker (repeatable): it runs tasks that require it "
                   "(docs/routing.md).")
@click.option("--outbox", type=click.Path(dir_okay=False, writable=True), metavar="PATH",
              help="Keep results and other events in this SQLite file until the broker has them: they survive "
                   "a lost link and a restart; the worker also starts without a network (docs/offline.md).")
@click.option("--accept-deploys", is_flag=True,
              help="Take signed code bundles (mqtt-tasks deploy) and apply them between tasks; needs --deploy-key "
                   "and --deploy-dir (docs/deploy.md).")
@click.option("--deploy-key", type=click.Path(dir_okay=False), metavar="PUBKEYFILE",
              help="The Ed25519 public key (PEM) that bundles must be signed with.")
@click.option("--deploy-dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Where applied bundles are kept: a restarted worker applies them again before any task.")
@click.option("--processes", "-p", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes to run under one supervisor.")
@click.option("--metrics-port", type=click.IntRange(1, 65535), metavar="PORT",
              help="Serve this worker's Prometheus metrics on PORT/metrics (with --processes N: PORT to PORT+N-1); "
                   "needs mqtt-tasks[metrics].")
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default="info", show_default=True)
@click.version_option(__version__, "--version")
def worker_command(app_ref: str, broker: str | None, prefix: str | None, queues: tuple[str, ...],
                   concurrency: int | None, worker_id: str | None, group: str, heartbeat: float | None,
                   grace: float, defer_after: float, started_after: float, cancel_grace: float | None,
                   progress_every: float | None, labels: tuple[str, ...], outbox: str | None, accept_deploys: bool,
                   deploy_key: str | None, deploy_dir: str | None, processes: int,
                   metrics_port: int | None, log_level: str) -> None:
    """Run a worker for the TaskApp at MODULE:ATTR (e.g. tasks:app) until SIGTERM or Ctrl-C."""
    from .supervisor import serve
    from .worker import Worker

    configure_logging(log_level)
    broker = broker or os.environ.pop(ENV_WORKER_BROKER, None)  # a supervisor's --broker, passed to its children
    app = load_app(app_ref)
    settings = worker_settings(app, broker, prefix, heartbeat)
    if processes > 1 and outbox:
        raise CLIError("--outbox takes one worker process (each process needs a file of its own)", RET_USAGE)
    deploy = _deploy_options(accept_deploys, deploy_key, deploy_dir, processes)
    if processes > 1:
        Connection(settings, f"mqtt-worker-probe-{uuid.uuid4().hex[:8]}").connect().close()  # fail fast, once
        _supervise(app_ref, broker, worker_id, processes, grace, queues=queues, concurrency=concurrency,
                   prefix=prefix, group=group, heartbeat=heartbeat, log_level=log_level,
                   defer_after=defer_after, started_after=started_after, cancel_grace=cancel_grace,
                   progress_every=progress_every, metrics_port=metrics_port, labels=labels)
        return
    from .worker.cancel import DEFAULT_CANCEL_GRACE
    from .worker.progress import DEFAULT_PROGRESS_EVERY

    worker = Worker(app, settings=settings, queues=list(queues) or None, concurrency=concurrency,
                    worker_id=worker_id, group=group, heartbeat_s=heartbeat, grace=grace,
                    defer_after=defer_after, started_after=started_after,
                    cancel_grace=DEFAULT_CANCEL_GRACE if cancel_grace is None else cancel_grace,
                    progress_every=DEFAULT_PROGRESS_EVERY if progress_every is None else progress_every,
                    labels=labels, outbox=outbox, deploy=deploy)

    def ready(w: Worker) -> None:
        click.echo(f"mqtt-worker {w.worker_id} ready: {app_ref} on {settings.display_url}, prefix "
                   f"{settings.prefix}, queues {','.join(w.queues)}, concurrency {w.concurrency}, group {w.group}"
                   + (f", labels {','.join(w.labels)}" if w.labels else ""),
                   nl=True)
        sys.stdout.flush()

    stop_metrics = _worker_metrics(worker, metrics_port)
    try:
        serve(worker, on_ready=ready)
    finally:
        stop_metrics()


def _deploy_options(accept: bool, key: str | None, directory: str | None, processes: int) -> tuple[str, str] | None:
    if not accept:
        if key or directory:
            raise CLIError("--deploy-key and --deploy-dir need --accept-deploys", RET_USAGE)
        return None
    if not key or not directory:
        raise CLIError("--accept-deploys needs --deploy-key PUBKEYFILE and --deploy-dir DIR", RET_USAGE)
    if processes > 1:
        raise CLIError("--accept-deploys takes one worker process (each process applies bundles of its own)", RET_USAGE)
    from .deploy.keys import load_public

    load_public(key)  # a bad key file is one line now, not a traceback later
    return key, directory


def _worker_metrics(worker: Any, port: int | None) -> Callable[[], None]:
    """``--metrics-port``: serve the worker's metrics; the function that stops them."""
    if port is None:
        return lambda: None
    from .worker.metrics import serve_worker_metrics

    try:
        stop = serve_worker_metrics(worker, port)
    except ImportError:
        raise CLIError("--metrics-port needs prometheus-client: pip install 'mqtt-tasks[metrics]'",
                       RET_MISSING_EXTRA) from None
    except OSError as exc:
        raise CLIError(f"--metrics-port {port}: {exc.strerror or exc}", RET_ERROR) from None
    click.echo(f"mqtt-worker {worker.worker_id} metrics on http://0.0.0.0:{port}/metrics")
    return stop


def worker_settings(app: TaskApp, broker: str | None, prefix: str | None, heartbeat: float | None) -> Settings:
    """The app's own settings, with what the command line says on top (docs/configuration.md).

    Broker: ``--broker``, else the app's ``broker=``; an app that names none was built from
    ``$MQTT_TASKS_BROKER``, else mqtt://127.0.0.1:1883. Prefix: ``--prefix``, else a ``?prefix=``
    in ``--broker``, else the app's. A command-line option always wins over the code, and the code
    over the environment, so one exported variable cannot move a worker to another broker or
    prefix behind its code's back."""
    settings = app.settings
    if broker:
        from_url = Settings.from_url(broker, signing_key=settings.signing_key)
        url_prefix = from_url.prefix if "prefix=" in broker.partition("?")[2] else settings.prefix
        settings = from_url.with_(prefix=url_prefix, heartbeat_s=settings.heartbeat_s,
                                  max_payload=settings.max_payload)
    overrides = {"prefix": prefix, "heartbeat_s": heartbeat}
    return settings.with_(**{k: v for k, v in overrides.items() if v is not None})


def _supervise(app_ref: str, broker: str | None, worker_id: str | None, processes: int, grace: float,
               **options: Any) -> None:
    from .supervisor import Supervisor
    from .worker import default_worker_id

    base = worker_id or default_worker_id()
    ids = [f"{base}-{i}" for i in range(processes)]

    def command(index: int, child_id: str) -> list[str]:
        argv = [sys.executable, "-m", "mqtt_tasks", "worker", app_ref, "--processes", "1",
                "--worker-id", child_id, "--grace", str(grace)]
        for queue in options["queues"]:
            argv += ["--queue", queue]
        for label in options["labels"]:
            argv += ["--label", label]
        for name, value in options.items():
            if name == "metrics_port" and value is not None:
                value = value + index  # one port per process
            if name not in ("queues", "labels") and value is not None:
                argv += [f"--{name.replace('_', '-')}", str(value)]
        return argv

    env = {ENV_WORKER_BROKER: broker} if broker else {}  # the URL may hold a password: keep it out of argv
    supervisor = Supervisor(command, ids, env=env, stop_timeout=grace + 15.0)
    click.echo(f"mqtt-worker supervisor (pid {os.getpid()}): {processes} worker processes {', '.join(ids)}")
    sys.stdout.flush()
    failure = supervisor.run()
    if failure:
        raise CLIError(f"supervisor: {failure}", RET_SUPERVISOR)


def worker_main() -> None:
    """Console script ``mqtt-worker``."""
    worker_command.main(prog_name="mqtt-worker")


# -- mqtt-tasks ----------------------------------------------------------------------------
@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version")
def cli() -> None:
    """mqtt-tasks: distributed tasks over MQTT."""


cli.add_command(worker_command, "worker")


class _NotJSON(ValueError):
    """Text that Python's json module reads but JSON does not allow (NaN, Infinity, 1e400)."""


def _strict_json(text: str) -> Any:
    """``json.loads`` without Python's extensions: NaN and Infinity are refused, and so is a number
    too large for a float (``1e400`` would become Infinity, which no JSON encoder can send)."""
    def refuse(name: str) -> Any:
        raise _NotJSON(f"{name} is not a JSON number")

    def finite(number: str) -> float:
        value = float(number)
        if value in (float("inf"), float("-inf")):
            raise _NotJSON(f"{number} is out of range for a JSON number")
        return value

    return json.loads(text, parse_constant=refuse, parse_float=finite)


def parse_arg(text: str) -> Any:
    """A positional task argument: JSON where it parses (2, 2.5, true, null, [1], {"a":1}), else the string.

    ``NaN`` and ``Infinity`` are not JSON, so they are sent as strings; a number out of a float's
    range (``1e400``) or a NaN inside an array or object is refused with one line."""
    try:
        return _strict_json(text)
    except _NotJSON as exc:
        if text.strip() in ("NaN", "Infinity", "-Infinity"):
            return text
        raise CLIError(f"argument {text!r}: {exc}; quote it as a JSON string to send text", RET_USAGE) from None
    except ValueError:
        return text


def _parse_kwargs(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = _strict_json(text)
    except ValueError as exc:
        raise CLIError(f"--kwargs is not valid JSON: {exc}", RET_USAGE) from None
    if not isinstance(value, dict):
        raise CLIError(f"--kwargs must be a JSON object, got {type(value).__name__}", RET_USAGE)
    return value


def _check_task_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    import re

    if not re.match(TASK_NAME_PATTERN, value):
        raise click.BadParameter(f"{value!r} is not a valid task name")
    return value


@cli.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("task", callback=_check_task_name)
@click.argument("args", nargs=-1)
@click.option("--kwargs", "kwargs_json", metavar="JSON", help='Keyword arguments as a JSON object: \'{"b": 3}\'.')
@click.option("--queue", "-q", default=DEFAULT_QUEUE, show_default=True, callback=_name_callback("queue"))
@click.option("--wait", "-w", is_flag=True, help="Wait for the result and print it as JSON.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="Seconds to wait for the broker's ack, or with --wait for the result (counted from the "
                   "task's start time when delayed).")
@click.option("--delay", type=float, metavar="SECONDS", help="Do not start it before SECONDS from now (the "
              "coordinator holds it meanwhile).")
@click.option("--at", "at", metavar="WHEN", help="Do not start it before WHEN: ISO 8601 (2030-01-31T08:00, "
              "local time unless it has an offset or Z) or epoch seconds.")
@click.option("--priority", type=click.IntRange(PRIORITY_MIN, PRIORITY_MAX), metavar=f"{PRIORITY_MIN}-{PRIORITY_MAX}",
              help="Higher first in the coordinator's backlog [default: 5].")
@click.option("--require", "requires", multiple=True, callback=_labels_callback("requires", MAX_REQUIRED),
              metavar="LABEL", help="Run it only on a worker with this label (repeatable; docs/routing.md).")
@click.option("--rate-limit", metavar="COUNT/UNIT", help="At most COUNT of TASK dispatched in any window (10/s, "
              "100/m, 1000/h, 5/10s), across the fleet; the coordinator enforces it.")
@click.option("--rate-key", metavar="KEY", help="With --rate-limit: the limit applies to each KEY separately.")
@broker_options
def submit(task: str, args: tuple[str, ...], kwargs_json: str | None, queue: str, wait: bool, timeout: float,
           delay: float | None, at: str | None, priority: int | None, requires: tuple[str, ...],
           rate_limit: str | None, rate_key: str | None, broker: str | None, prefix: str | None) -> None:
    """Submit TASK with ARGS (each parsed as JSON where valid, else a string); print its id or, with --wait,
    its result. Put negative numbers after --: submit add -- -1 2."""
    kwargs = _parse_kwargs(kwargs_json)
    positional = [parse_arg(a) for a in args]
    extra = scheduling_fields(delay=delay, at=None if at is None else parse_when(at), priority=priority,
                              requires=requires)
    if rate_key is not None and rate_limit is None:
        raise CLIError("--rate-key needs --rate-limit", RET_USAGE)
    if rate_limit is not None:
        extra = {**(extra or {}), "rate_limit": check_rate_limit(rate_limit)}
        extra.update({"rate_key": rate_key} if rate_key is not None else {})
    settings = Settings.from_env(broker, prefix=prefix)
    if extra and "not_before" in extra:
        timeout += max(0.0, extra["not_before"] - time.time())
    with SignalLatch() as latch:  # Ctrl-C: one line, whatever the main thread waits on; another: out at once
        app = TaskApp(settings=settings)
        connecting = _until_interrupted(app.connect, latch)
        if not connecting.done():  # the connecting thread holds the app: no close, the exit ends it
            raise CLIError(f"interrupted while connecting to {settings.display_url}; the task was not published",
                           RET_INTERRUPTED)
        try:
            connecting.result()
            if latch.signame:
                raise CLIError("interrupted; the task was not published", RET_INTERRUPTED)
            handle = app.send(task, positional, kwargs, options=TaskOptions(queue=queue), extra=extra)
            out = _await_result(app, handle, timeout, latch, settings, queue) if wait \
                else _await_ack(app, handle, timeout, latch)
        finally:
            app.close()
    click.echo(out)


T = TypeVar("T")


def _until_interrupted(fn: Callable[[], T], latch: SignalLatch) -> concurrent.futures.Future[T]:
    """Run ``fn`` (bounded by its own timeout) on a helper thread until it returns or Ctrl-C comes.

    The main thread waits only on ``latch.event``, which the latch's relay sets the moment a signal
    arrives (signals.py): a signal that lands just before a wait blocks would otherwise be noticed
    only when that wait ends (``submit --wait`` once sat out its 30 s timeout). Returns ``fn``'s
    future, not done when interrupted."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()
    wake = latch.event

    def run() -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:  # handed to the main thread, which raises it
            future.set_exception(exc)
        wake.set()

    threading.Thread(target=run, name="mqtt-tasks-submit", daemon=True).start()
    while not future.done() and not latch.signame:  # signame is set before the relay sets wake
        wake.wait()
        wake.clear()
    return future


def _await_ack(app: TaskApp, handle: TaskHandle, timeout: float, latch: SignalLatch) -> str:
    acked = _until_interrupted(lambda: app.flush(timeout), latch)
    if not acked.done():
        raise CLIError(f"interrupted before the broker acknowledged task {handle.id}; it may or may not have "
                       f"been published (mqtt-tasks status {handle.id})", RET_INTERRUPTED)
    if not acked.result():
        raise CLIError(f"the broker did not acknowledge task {handle.id} within {timeout}s", RET_CONNECT)
    return handle.id


def _await_result(app: TaskApp, handle: TaskHandle, timeout: float, latch: SignalLatch, settings: Settings,
                  queue: str) -> str:
    """The result as JSON; a failed task raises its error (``exit_code_for``)."""
    waited = _until_interrupted(lambda: handle.result(timeout), latch)
    if not waited.done():
        raise CLIError(f"interrupted; task {handle.id} was submitted and may still run "
                       f"(mqtt-tasks status {handle.id})", RET_INTERRUPTED)
    try:
        return json.dumps(waited.result())
    except ResultTimeoutError:
        hint = _until_interrupted(lambda: _why_no_result(settings, queue), latch)
        raise CLIError(f"no result for task {handle.id} within {timeout}s: "
                       f"{hint.result() if hint.done() else 'interrupted'}", RET_TIMEOUT) from None


def parse_when(text: str) -> float:
    """``--at``: epoch seconds, or an ISO 8601 date and time (local time unless it has an offset)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise CLIError(f"--at {text!r}: not a time; use ISO 8601 (2030-01-31T08:00, 2030-01-31T08:00+02:00) "
                       "or epoch seconds", RET_USAGE) from None
    return when.timestamp()


def _why_no_result(settings: Settings, queue: str) -> str:
    """A hint for a submit --wait that timed out, from the workers' retained states."""
    try:
        states = fetch_worker_states(settings)
    except MqttTasksError:
        return "and the workers' states could not be read"
    serving = [s for s in states if s.state == ONLINE and queue in s.queues]
    if not serving:
        return (f"no online worker serves queue {queue!r} on {settings.prefix}/ "
                f"(mqtt-tasks workers lists the fleet)")
    held = sum(len(s.tasks) for s in serving)
    return (f"{len(serving)} worker(s) serve queue {queue!r}, holding {held} task(s); it may still be "
            "waiting or running (mqtt-tasks status ID, with a coordinator)")


# -- mqtt-tasks workers --------------------------------------------------------------------
def fetch_worker_states(settings: Settings, *, quiet: float = WORKERS_QUIET_S, limit: float = 5.0) -> list[WorkerState]:
    """The retained states on ``P/workers/+``: listen until none arrived for ``quiet`` seconds."""
    messages: list[Message] = []
    arrived = threading.Event()

    def on_message(message: Message) -> None:
        messages.append(message)
        arrived.set()

    conn = Connection(settings, f"mqtt-tasks-cli-{uuid.uuid4().hex[:8]}", on_message=on_message)
    conn.subscribe(Topics(settings.prefix).all_workers)
    conn.connect()  # returns once the SUBACK is in: retained messages follow at once
    try:
        deadline = time.monotonic() + limit
        while arrived.wait(quiet) and time.monotonic() < deadline:
            arrived.clear()
    finally:
        conn.close()
    states: dict[str, WorkerState] = {}
    for message in list(messages):
        if not message.payload:
            continue  # a cleared retained state
        try:
            state = codec.decode_worker_state(message.payload, topic=message.topic,
                                              max_payload=settings.max_payload)
        except DecodeError as exc:
            log.warning("ignoring an undecodable worker state on %s: %s", message.topic, exc.reason)
            continue
        states[state.worker] = state
    return [states[k] for k in sorted(states)]


def _age(ts: float, now: float) -> str:
    seconds = max(0.0, now - ts)
    if seconds < 120:
        return f"{seconds:.1f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def worker_rows(states: list[WorkerState], now: float) -> list[tuple[str, ...]]:
    return [(s.worker, s.state, ",".join(s.queues), str(s.concurrency), str(len(s.tasks)),
             "-" if s.free is None else str(s.free), _age(s.ts, now)) for s in states]


WORKER_COLUMNS = ("worker", "state", "queues", "concurrency", "held", "free", "last seen")


def print_table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """A rich table on a terminal; aligned plain text in a pipe or where rich is not installed.

    The first column (an id) is never cut or folded, so it can be pasted into another command."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        Console = None  # type: ignore[assignment,misc]  # noqa: N806
    if Console is None or not sys.stdout.isatty():
        widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
        for line in (columns, *rows):
            click.echo("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
        return
    table = Table(title=title)
    for i, column in enumerate(columns):
        if i == 0:
            table.add_column(column, no_wrap=True, min_width=max((len(r[0]) for r in rows), default=len(column)))
        else:
            table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


@cli.command(context_settings={"help_option_names": ["-h", "--help"]})
@broker_options
@click.option("--json", "as_json", is_flag=True, help="Print the states as a JSON array.")
def workers(broker: str | None, prefix: str | None, as_json: bool) -> None:
    """List the workers from their retained heartbeats."""
    settings = Settings.from_env(broker, prefix=prefix)
    states = fetch_worker_states(settings)
    if as_json:
        click.echo(json.dumps([s.model_dump(mode="json", exclude_none=True) for s in states], indent=2))
    elif not states:
        click.echo(f"no workers have reported on {settings.prefix}/workers/+ at {settings.display_url}")
    else:
        print_table(f"workers on {settings.display_url}", WORKER_COLUMNS, worker_rows(states, time.time()))


# -- mqtt-tasks broker ---------------------------------------------------------------------
@cli.command("broker", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=1883, show_default=True)
def broker_command(host: str, port: int) -> None:
    """Run the embedded MQTT broker (amqtt with shared subscriptions) until Ctrl-C."""
    configure_logging("warning")
    try:
        from .broker import run_broker
    except ImportError:
        raise CLIError("the embedded broker needs amqtt: pip install 'mqtt-tasks[broker]'", RET_MISSING_EXTRA) from None

    def ready(broker: Any) -> None:
        click.echo(f"mqtt-tasks broker listening on {broker.url} (Ctrl-C to stop)")
        sys.stdout.flush()

    try:
        run_broker(host, port, ready=ready)
    except OSError as exc:
        raise CLIError(exc.strerror or str(exc), RET_ERROR) from None


# -- mqtt-tasks demo -----------------------------------------------------------------------
@cli.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--workers", "worker_count", type=click.IntRange(1, 16), default=3, show_default=True,
              help="Worker processes (8 slots each).")
@click.option("--tasks", "task_count", type=click.IntRange(1, 100_000), default=2000, show_default=True,
              help="Quick tasks in phase 1's burst.")
@click.option("--slow-tasks", "slow_count", type=click.IntRange(1, 1000), default=None,
              help="Slow calls (1.2-2 s) in phase 2 [default: 8 per worker but one, so the others "
                   "have room for the killed worker's].")
@click.option("--coordinator/--no-coordinator", default=True, show_default=True,
              help="Run a coordinator (in memory): it records every task and runs none. "
                   "Without it, phase 2 kills no worker (its tasks would be lost).")
@click.option("--kill-worker/--no-kill-worker", default=True, show_default=True,
              help="Phase 2: SIGKILL the worker running the most slow calls once all have started, "
                   "and follow their recovery (needs a coordinator and 2 or more workers).")
def demo(worker_count: int, task_count: int, slow_count: int | None, coordinator: bool, kill_worker: bool) -> None:
    """Show what mqtt-tasks does, on an embedded broker with nothing else installed.

    Phase 1: a burst of quick tasks, with throughput and latency measured end to end.
    Phase 2: slow tasks over worker processes, one worker killed mid-run and its tasks recovered
    by the coordinator. Exits 1 if any task got no final status event."""
    configure_logging("error")  # the demo says what happens itself; dead-on-purpose warnings are noise
    try:
        from rich.console import Console

        from .broker import EmbeddedBroker  # noqa: F401 - the demo's broker process needs amqtt: say so here
        from .demo import run_demo
        from .demo.screen import RichScreen
    except ImportError as exc:
        raise CLIError(f"the demo needs amqtt and rich ({exc.name} is missing): "
                       "pip install 'mqtt-tasks[demo]'", RET_MISSING_EXTRA) from None
    console = Console(highlight=False)
    console.print(f"[bold]mqtt-tasks demo[/]: two phases on this machine ({os.cpu_count() or '?'} CPUs), "
                  "about 15 s")
    result = run_demo(workers=worker_count, tasks=task_count, slow_tasks=slow_count, coordinator=coordinator,
                      kill_worker=kill_worker, screen=RichScreen(console))
    problems = result.problems()
    if problems:
        raise CLIError("; ".join(problems), RET_ERROR)


# -- mqtt-tasks coordinator / status / tasks ---------------------------------------------------
@cli.command("coordinator", context_settings={"help_option_names": ["-h", "--help"]})
@broker_options
@click.option("--db", default="mqtt-tasks.db", show_default=True,
              help="The durable record: an SQLite file, or postgresql://user@host/dbname (the postgres extra).")
@click.option("--ha/--no-ha", default=None,
              help="Stand by until this coordinator leads the prefix, so several can share it and its database "
                   "[default: on for PostgreSQL, off for an SQLite file].")
@click.option("--name", help="This coordinator among several (in its presence) [default: host-pid-random].")
@click.option("--lease-ttl", type=click.FloatRange(min=0.5), default=5.0, show_default=True,
              help="With --ha: seconds a leader's lease lasts unrenewed; a standby takes over about this long "
                   "after the leader died.")
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default="info", show_default=True)
def coordinator_command(broker: str | None, prefix: str | None, db: str, ha: bool | None, name: str | None,
                        lease_ttl: float, log_level: str) -> None:
    """Run the coordinator (leases, retries, backlog, dead letters) until SIGTERM or Ctrl-C."""
    from .coordinator import run_coordinator
    from .coordinator.standby import run_high_availability
    from .store.opening import is_postgres

    configure_logging(log_level)
    settings = Settings.from_env(broker, prefix=prefix)
    ha = is_postgres(db) if ha is None else ha
    ready, failed = threading.Event(), threading.Event()
    shown = db.split("@")[-1] if is_postgres(db) else db  # no password in the output

    def announce() -> None:
        ready.wait()
        if not failed.is_set():
            role = " (high availability: standing by until it leads)" if ha else ""
            click.echo(f"mqtt-tasks coordinator ready on {settings.display_url}, prefix {settings.prefix}, "
                       f"db {shown}{role}")
            sys.stdout.flush()

    announcer = threading.Thread(target=announce, name="mqtt-tasks-cli-ready", daemon=True)
    announcer.start()
    try:
        with SignalLatch() as latch:
            if ha:
                run_high_availability(settings, db, stop_event=latch.event, ready=ready, name=name, ttl=lease_ttl)
            else:
                run_coordinator(settings, db, stop_event=latch.event, ready=ready)
    finally:  # a coordinator that never got ready (a bad --db) must not leave the announcer waiting for good
        if not ready.is_set():
            failed.set()
            ready.set()
        announcer.join()


@cli.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("task_id")
@broker_options
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True)
def status(task_id: str, broker: str | None, prefix: str | None, timeout: float) -> None:
    """Print the coordinator's record of TASK_ID (state, attempts, history, result) as JSON."""
    from .coordinator import query_status

    record = query_status(Settings.from_env(broker, prefix=prefix), task_id, timeout=timeout)
    click.echo(json.dumps(record, indent=2, default=str))


@cli.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("task_id")
@broker_options
@click.option("--reason", help="Why; recorded and sent in the task's cancelled event.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="Seconds to wait for the coordinator's answer.")
def cancel(task_id: str, broker: str | None, prefix: str | None, reason: str | None, timeout: float) -> None:
    """Cancel TASK_ID: a task not started ends cancelled at once, a running one is stopped.

    Exits 8 when the coordinator has no record of it, 1 when it already ended otherwise, 3 when no
    coordinator answered (the request still reaches the workers: docs/scheduling.md)."""
    from .coordinator import request_cancel

    answer = request_cancel(Settings.from_env(broker, prefix=prefix), task_id, reason, timeout=timeout)
    click.echo(f"{task_id} {answer.get('state') or 'cancelled'}")


SCHEMA_KINDS = ("task", "status", "worker", "error", "presence", "receipt", "cancel", "schedule",
                "workflow")  # protocol/schema.py
TASK_COLUMNS = ("id", "task", "queue", "state", "attempt", "worker", "updated")


def _cursor_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from .store.listing import decode_cursor  # not at import: a worker's start-up needs no store

    try:
        if value is not None:
            decode_cursor(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc).removeprefix("before: ")) from None
    return value


def _task_pages(settings: Settings, limit: int, timeout: float, **where: str | None) -> tuple[list[Any], str | None]:
    """Up to ``limit`` task summaries, from as many pages as that takes; and the next page's cursor."""
    from .coordinator import query_task_page
    from .store.listing import MAX_LIMIT

    records: list[Any] = []
    while True:
        answer = query_task_page(settings, where["state"], min(limit - len(records), MAX_LIMIT), timeout,
                                 queue=where["queue"], task=where["task"], before=where["before"])
        records.extend(answer["tasks"])
        where["before"] = answer["next"]
        if answer["next"] is None or len(records) >= limit:
            return records, answer["next"]


@cli.command(context_settings={"help_option_names": ["-h", "--help"]})
@broker_options
@click.option("--state", type=click.Choice(RECORD_STATES), help="Only tasks in this state.")
@click.option("--queue", callback=_name_callback("queue"), help="Only tasks of this queue.")
@click.option("--task", "task_name", metavar="NAME", help="Only tasks of this task name.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True,
              help="Tasks to list (over 1,000: asked for in pages of 1,000).")
@click.option("--before", metavar="CURSOR", callback=_cursor_callback,
              help="List the tasks after this cursor: the one printed under the previous list.")
@click.option("--json", "as_json", is_flag=True, help="Print the summaries as a JSON array.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True)
def tasks(broker: str | None, prefix: str | None, state: str | None, queue: str | None, task_name: str | None,
          limit: int, before: str | None, as_json: bool, timeout: float) -> None:
    """List the tasks the coordinator knows, most recently updated first, filtered by state, queue
    and task name. When there are more, the command for the next page is printed on stderr."""
    settings = Settings.from_env(broker, prefix=prefix)
    records, cursor = _task_pages(settings, limit, timeout, state=state, queue=queue, task=task_name, before=before)
    if as_json:
        click.echo(json.dumps(records, indent=2, default=str))
    else:
        now = time.time()
        rows: list[tuple[str, ...]] = [
            (str(r["id"]), str(r.get("task") or ""), str(r.get("queue") or ""), str(r["state"]),
             str(r.get("attempt") or ""),
             str(r.get("worker") or ""), _age(float(r.get("updated") or now), now))
            for r in records
        ]
        print_table(f"tasks on {settings.display_url}", TASK_COLUMNS, rows)
    if cursor is not None:
        click.echo(f"more: add --before {cursor}", err=True)


STATS_WORKER_COLUMNS = ("worker", "state", "free", "labels")


@cli.command(context_settings={"help_option_names": ["-h", "--help"]})
@broker_options
@click.option("--json", "as_json", is_flag=True, help="Print the coordinator's whole answer as JSON.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True)
def stats(broker: str | None, prefix: str | None, as_json: bool, timeout: float) -> None:
    """Print the coordinator's counts: tasks by state, live, backlog, workers and their free slots."""
    from .coordinator import query_stats

    settings = Settings.from_env(broker, prefix=prefix)
    answer = query_stats(settings, timeout=timeout)
    if as_json:
        shown = {k: v for k, v in answer.items() if k not in ("ok", "correlation")}  # the exchange's own
        click.echo(json.dumps(shown, indent=2, sort_keys=True, default=str))
        return
    for line in stats_lines(answer, f"{settings.display_url} (prefix {settings.prefix})"):
        click.echo(line)
    workers = answer.get("workers") or {}
    if workers:
        print_table("workers", STATS_WORKER_COLUMNS, [
            (name, str(w.get("state", "")), str(w.get("free", "")), ",".join(w.get("labels") or []))
            for name, w in sorted(workers.items())])


def stats_lines(answer: dict[str, Any], where: str) -> list[str]:
    """The summary of a ``stats`` answer (coordinator/queries.py ``snapshot``), one fact a line."""
    def listing(counts: dict[str, Any], order: tuple[str, ...] = (), *, named_first: bool = False) -> str:
        keys = [k for k in order if counts.get(k)] + sorted(k for k in counts if k not in order and counts[k])
        return ", ".join(f"{k} {counts[k]}" if named_first else f"{counts[k]} {k}" for k in keys) or "none"

    store = answer.get("counts")
    by_queue = answer.get("backlog_by_queue") or {}
    workers_by_state = answer.get("workers_by_state") or {}
    lines = [f"coordinator at {where}",
             f"tasks:    {listing(store, RECORD_STATES)}" if isinstance(store, dict)
             else f"tasks:    not counted: {answer.get('store_error') or 'no counts in the answer'}",
             f"live:     {answer.get('live', 0)}",
             f"backlog:  {answer.get('backlog', 0)}" + (f" ({listing(by_queue)})" if by_queue else "")
             + f"; {answer.get('rate_limited', 0)} rate-limited",
             f"workers:  {answer.get('workers_total', 0)}" + (f" ({listing(workers_by_state)})" if workers_by_state
                                                               else "")
             + f"; {answer.get('free_slots', 0)} free slot(s)",
             f"counters: {listing(answer.get('stats') or {}, named_first=True)}"]
    shown = len(answer.get("workers") or {})
    if shown < int(answer.get("workers_total") or 0):
        lines.append(f"(the first {shown} workers by name below; --json for the answer)")
    return lines


@cli.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("task_id")
@broker_options
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True)
def retry(task_id: str, broker: str | None, prefix: str | None, timeout: float) -> None:
    """Run the dead, cancelled or expired task TASK_ID again, as a new attempt (its history is kept)."""
    from .coordinator import retry_task

    record = retry_task(Settings.from_env(broker, prefix=prefix), task_id, timeout=timeout)
    click.echo(f"task {record['id']} will run again as attempt {record['attempt']} ({record['state']})")


@cli.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("queue", callback=_name_callback("queue"))
@click.option("--keep-scheduled", is_flag=True, help="Spare the delayed tasks (state scheduled).")
@broker_options
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True)
def purge(queue: str, keep_scheduled: bool, broker: str | None, prefix: str | None, timeout: float) -> None:
    """Cancel every task of QUEUE that waits in the coordinator: its backlog, its retries and its delayed
    tasks. Tasks a worker may hold (queued, dispatched, started) are not touched."""
    from .coordinator import purge_queue

    answer = purge_queue(Settings.from_env(broker, prefix=prefix), queue, keep_scheduled=keep_scheduled,
                         timeout=timeout)
    detail = ", ".join(f"{n} {state}" for state, n in sorted(answer.get("by_state", {}).items()))
    click.echo(f"purged {answer['purged']} task(s) from queue {queue} ({detail})")


@cli.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("kind", required=False, type=click.Choice(sorted(SCHEMA_KINDS)))
def schema(kind: str | None) -> None:
    """Print the JSON Schema of the wire messages (all of them, or one KIND)."""
    from .protocol.schema import json_schemas

    schemas = json_schemas()
    click.echo(json.dumps(schemas[kind] if kind else schemas, indent=2, sort_keys=True))


@cli.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("role", type=click.Choice(list(ROLES)))
@click.argument("ident")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True,
              envvar="MQTT_TASKS_ACL_PASSWORD", help="[env: MQTT_TASKS_ACL_PASSWORD]")
@click.option("--prefix", default="mqtt-tasks", show_default=True)
@click.option("--queue", "queues", multiple=True,
              help="Limit task topics to these queues (producer, worker, dashboard).")
@click.option("--password-file", type=click.Path(dir_okay=False), help="Mosquitto password_file to update.")
@click.option("--acl-file", type=click.Path(dir_okay=False), help="Mosquitto acl_file to update.")
def acl(role: str, ident: str, password: str, prefix: str, queues: tuple[str, ...], password_file: str | None,
        acl_file: str | None) -> None:
    """Create or replace a Mosquitto user IDENT with the least-privilege ACL of ROLE (docs/security.md).

    \b
    producer     submit, cancel, read its replies, ask read-only queries (status, tasks, stats)
    worker       take its queues, report, heartbeat as IDENT (its --worker-id)
    coordinator  mqtt-tasks coordinator: tasks, leases, queries, dead letters, rollouts
    monitor      read status, workers, dead letters, errors; ask read-only queries
    deployer     the deploy.* ops (mqtt-tasks deploy) and nothing else
    operator     retry, purge, cancel, schedules, and the read-only queries
    dashboard    mqtt-tasks dashboard: the live view, queries, submit, cancel, retry

    With neither file given, print the two entries to paste."""
    from .acl import acl_command

    try:
        click.echo(acl_command(role, ident, password, prefix=prefix, queues=list(queues) or None,
                               password_file=password_file, acl_file=acl_file))
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc


# -- mqtt-tasks schedule add / list / rm (docs/scheduling.md) ---------------------------------
@cli.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def schedule() -> None:
    """Periodic tasks, held and fired by the coordinator."""


@schedule.command("add", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("name")
@click.argument("task", callback=_check_task_name)
@click.argument("args", nargs=-1)
@click.option("--cron", metavar="EXPR", help='Five cron fields or a macro: "*/5 * * * *", @hourly.')
@click.option("--every", type=click.IntRange(min=1), metavar="SECONDS", help="Or: fire every SECONDS.")
@click.option("--kwargs", "kwargs_json", metavar="JSON", help="Keyword arguments as a JSON object.")
@click.option("--queue", "-q", default=DEFAULT_QUEUE, show_default=True, callback=_name_callback("queue"))
@click.option("--timezone", "--tz", "timezone", default="UTC", show_default=True, help="IANA zone of --cron.")
@click.option("--overlap", type=click.Choice(["skip", "buffer_one", "allow_all"]), default="skip",
              show_default=True, help="A fire while the previous fire's task is unfinished.")
@click.option("--catchup", type=click.Choice(["none", "last", "all"]), default="last", show_default=True,
              help="Fires missed while the coordinator was down.")
@click.option("--catchup-window", type=click.FloatRange(min=0, min_open=True), default=3600.0, show_default=True,
              help="Seconds: missed fires older than this never run.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="Seconds to wait for the coordinator.")
@broker_options
def schedule_add(name: str, task: str, args: tuple[str, ...], cron: str | None, every: int | None,
                 kwargs_json: str | None, queue: str, timezone: str, overlap: str, catchup: str,
                 catchup_window: float, timeout: float, broker: str | None, prefix: str | None) -> None:
    """Create or update schedule NAME: run TASK with ARGS (JSON where valid) --every SECONDS or on --cron EXPR."""
    from .schedules import put_schedule, validate_schedule

    if (cron is None) == (every is None):
        raise CLIError("give exactly one of --cron EXPR and --every SECONDS", RET_USAGE)
    definition = validate_schedule({
        "name": name, "task": task, "args": [parse_arg(a) for a in args], "kwargs": _parse_kwargs(kwargs_json),
        "queue": queue, "cron": cron, "every": every, "timezone": timezone, "overlap": overlap, "catchup": catchup,
        "catchup_window": catchup_window, "source": "cli"})
    answer = put_schedule(Settings.from_env(broker, prefix=prefix), definition, timeout=timeout)
    word = "created" if answer.get("created") else "updated" if answer.get("changed") else "unchanged"
    click.echo(f"schedule {name} {word}; next fire {_fire_time(answer['schedule'].get('next_fire'))}")


@schedule.command("list", context_settings={"help_option_names": ["-h", "--help"]})
@broker_options
@click.option("--json", "as_json", is_flag=True, help="Print the schedules as a JSON array.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True)
def schedule_list(broker: str | None, prefix: str | None, as_json: bool, timeout: float) -> None:
    """List the coordinator's schedules with their next fire."""
    from .schedules import list_schedules

    settings = Settings.from_env(broker, prefix=prefix)
    found = list_schedules(settings, timeout=timeout)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    rows: list[tuple[str, ...]] = [
        (s["name"], s["task"], f"every {s['every']}s" if s.get("every") else f"{s['cron']} {s['timezone']}",
         s["overlap"], s["catchup"], str(s.get("fired", 0)), str(s.get("skipped", 0)),
         _fire_time(s.get("next_fire"))) for s in found]
    print_table(f"schedules on {settings.display_url}",
                ("name", "task", "when", "overlap", "catchup", "fired", "skipped", "next fire"), rows)


@schedule.command("rm", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("name")
@broker_options
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True)
def schedule_rm(name: str, broker: str | None, prefix: str | None, timeout: float) -> None:
    """Delete schedule NAME (tasks it already fired are not touched)."""
    from .schedules import remove_schedule

    remove_schedule(Settings.from_env(broker, prefix=prefix), name, timeout=timeout)
    click.echo(f"schedule {name} removed")


# -- mqtt-tasks dashboard (docs/dashboard.md) -------------------------------------------------
@cli.command(context_settings={"help_option_names": ["-h", "--help"]})
@broker_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; beyond loopback a token is required (made up when --token is not given).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--token", envvar="MQTT_TASKS_DASHBOARD_TOKEN", help="Require this bearer token on every request "
              "[env: MQTT_TASKS_DASHBOARD_TOKEN; default: none on loopback].")
@click.option("--no-metrics", is_flag=True, help="Do not serve /metrics.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="Seconds to wait for the coordinator's answers and the broker's acks.")
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default="warning", show_default=True)
def dashboard(broker: str | None, prefix: str | None, host: str, port: int, token: str | None, no_metrics: bool,
              timeout: float, log_level: str) -> None:
    """Serve the web dashboard, the HTTP API (/api/) and Prometheus metrics (/metrics) until Ctrl-C."""
    configure_logging(log_level)
    try:
        from .web import WebOptions, run_dashboard
        from .web.server import effective_token
    except ImportError as exc:
        raise CLIError(f"the dashboard needs Starlette, uvicorn and prometheus-client ({exc.name} is missing): "
                       "pip install 'mqtt-tasks[web]'", RET_MISSING_EXTRA) from None
    settings = Settings.from_env(broker, prefix=prefix)
    options = WebOptions(token=effective_token(host, token), query_timeout=timeout, ack_timeout=timeout,
                         metrics=not no_metrics)

    def ready(url: str) -> None:
        click.echo(f"mqtt-tasks dashboard on {url} for {settings.display_url}, prefix {settings.prefix} "
                   "(Ctrl-C to stop)")
        sys.stdout.flush()

    try:
        run_dashboard(settings, host, port, options, on_ready=ready)
    except OSError as exc:
        raise CLIError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", RET_ERROR) from None


def _fire_time(ts: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) if ts is not None else "never"


def main() -> None:
    """Console script ``mqtt-tasks``."""
    cli.main(prog_name="mqtt-tasks")


# -- mqtt-tasks deploy (docs/deploy.md): its own module; imported last, it uses the helpers above --
from .deploy.cli import deploy as _deploy  # noqa: E402

cli.add_command(_deploy)
