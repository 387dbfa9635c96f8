"""TaskApp, the ``@app.task`` decorator, and task handles (the producer side).

``app.task`` registers a function under a name and a queue. ``fn.submit(*args, **kwargs)``
publishes a task and returns a ``TaskHandle`` at once; nothing waits on the network unless
the caller asks for the result (``handle.result(timeout)`` or ``await handle``).

Results come back on the producer's own reply topic (and, over MQTT 5, as a Response Topic
with Correlation Data): ``P/replies/{username}/p-{random}`` from the client id
``{username}-p-{random}`` when the settings carry a username, so that a role's ACL can name it and
two processes of one user never take over each other's session; else ``P/replies/{client_id}``
(``protocol.rpc.reply_address``). The network thread only decodes the
reply and resolves the waiting future.

While a coordinator exists on the prefix, each task also asks for a receipt
(``receipt_to``) and is kept until the coordinator's receipt says it recorded it: a PUBACK from
the broker is no proof that the task survives a broker crash (``receipts``).
"""

from __future__ import annotations

import concurrent.futures
import datetime
import inspect
import json
import logging
import math
import re
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import signing, tracing
from .canvas import Signature
from .config import Settings
from .errors import (
    ConfigError,
    DecodeError,
    ResultTimeoutError,
    SagaCompensatedError,
    TaskCancelledError,
    TaskDeadError,
    TaskExpiredError,
    TaskFailedError,
)
from .protocol import codec, events, rpc
from .protocol.labels import MAX_REQUIRED, check_labels
from .protocol.rates import RATE_KEY_MAX, parse_rate_limit
from .protocol.states import (
    CANCELLED,
    COMPENSATED,
    DEAD,
    EXPIRED,
    PRIORITY_MAX,
    PRIORITY_MIN,
    PROGRESS,
    SUCCEEDED,
    TASK_NAME_PATTERN,
)
from .protocol.topics import DEFAULT_QUEUE, Topics, check_name, is_valid_id
from .receipts import ReceiptKeeper, ReceiptPolicy
from .transport import Connection, Message

if TYPE_CHECKING:  # replies are decoded with pydantic only when they arrive: a worker never needs it
    from .protocol.messages import StatusEvent

log = logging.getLogger(__name__)

R = TypeVar("R")
_TASK_NAME_RE = re.compile(TASK_NAME_PATTERN)


@dataclass(frozen=True)
class TaskOptions:
    """Per-task options: set at registration, overridable per submission."""

    queue: str = DEFAULT_QUEUE
    timeout: float | None = None
    max_attempts: int | None = None
    expires: float | None = None  # seconds after submission
    step_timeout: float | None = None  # a started attempt must report progress this often (coordinator)
    rate_limit: str | None = None  # COUNT/[N]UNIT, enforced by the coordinator across the fleet
    rate_key: str | Callable[..., Any] | None = None  # an argument's name, or f(*args, **kwargs) -> key


@dataclass
class TaskDef(Generic[R]):
    """A registered task. Calling it runs the function locally; ``submit`` runs it remotely."""

    app: TaskApp
    fn: Callable[..., R]
    name: str
    options: TaskOptions = field(default_factory=TaskOptions)

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        return self.fn(*args, **kwargs)

    def submit(self, *args: Any, **kwargs: Any) -> TaskHandle:
        """Publish the task with these arguments; return its handle at once."""
        return self.app.send(self.name, args, kwargs, options=self.options)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature: this task with these arguments, as a step of a workflow (``chain``, ``group``,
        ``chord``, ``saga``); in a chain the previous step's result is prepended to ``args``."""
        return Signature.of(self.app, self.name, args, kwargs, self.options)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: like ``s``, but no previous result is prepended to its args."""
        return Signature.of(self.app, self.name, args, kwargs, self.options, immutable=True)

    def submit_with(
        self,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        task_id: str | None = None,
        queue: str | None = None,
        timeout: float | None = None,
        max_attempts: int | None = None,
        expires: float | None = None,
        delay: float | None = None,
        at: datetime.datetime | float | None = None,
        priority: int | None = None,
        step_timeout: float | None = None,
        rate_limit: str | None = None,
        rate_key: str | None = None,
        requires: Iterable[str] | None = None,
    ) -> TaskHandle:
        """Submit with per-submission options overriding the registration's.

        ``delay`` (seconds) or ``at`` (a datetime, naive meaning local time, or epoch seconds): the
        task does not start before then; it is sent at once with ``not_before`` and the coordinator
        holds it (docs/scheduling.md). ``priority``: 0-9, higher first in the coordinator's backlog.
        ``rate_limit`` (``"10/s"``) and ``rate_key`` (this submission's key itself, a string):
        override the registration's (docs/scheduling.md, "Rate limits").
        ``requires``: labels the worker that runs it must all have (docs/routing.md)."""
        opts = TaskOptions(
            queue=queue or self.options.queue,
            timeout=timeout if timeout is not None else self.options.timeout,
            max_attempts=max_attempts if max_attempts is not None else self.options.max_attempts,
            expires=expires if expires is not None else self.options.expires,
            step_timeout=step_timeout if step_timeout is not None else self.options.step_timeout,
            rate_limit=check_rate_limit(rate_limit) if rate_limit is not None else self.options.rate_limit,
            rate_key=self.options.rate_key,
        )
        extra = scheduling_fields(delay=delay, at=at, priority=priority, requires=requires)
        if rate_key is not None:
            extra = {**(extra or {}), "rate_key": _key_text(rate_key, self.name)}
        return self.app.send(self.name, tuple(args), kwargs or {}, options=opts, task_id=task_id, extra=extra)


def scheduling_fields(*, delay: float | None = None, at: datetime.datetime | float | None = None,
                      priority: int | None = None, now: float | None = None,
                      requires: Iterable[str] | None = None) -> dict[str, Any] | None:
    """The task fields ``not_before``, ``priority`` and ``requires`` for a submission, checked: a delay
    or a time in the past, both at once, a priority out of 0-9 or a bad label (``requires_field``)
    is a ``ConfigError`` naming the value."""
    fields: dict[str, Any] = {}
    now = time.time() if now is None else now
    if delay is not None and at is not None:
        raise ConfigError("give a delay or a time (at), not both")
    if delay is not None:
        if not isinstance(delay, int | float) or isinstance(delay, bool) or not math.isfinite(delay) or delay < 0:
            raise ConfigError(f"delay {delay!r} is in the past or not a number: give seconds >= 0")
        if delay > 0:
            fields["not_before"] = now + delay
    elif at is not None:
        when = at.timestamp() if isinstance(at, datetime.datetime) else at
        if not isinstance(when, int | float) or isinstance(when, bool) or not math.isfinite(when):
            raise ConfigError(f"at {at!r} is not a datetime or epoch seconds")
        if when < now:
            raise ConfigError(f"at {_iso(when)} is in the past (now {_iso(now)})")
        fields["not_before"] = float(when)
    if priority is not None:
        if not isinstance(priority, int) or isinstance(priority, bool) or not (
                PRIORITY_MIN <= priority <= PRIORITY_MAX):
            raise ConfigError(f"priority {priority!r} is out of range: give an integer {PRIORITY_MIN}-{PRIORITY_MAX}")
        fields["priority"] = priority
    fields.update(requires_field(requires))
    return fields or None


def check_rate_limit(text: Any) -> str:
    """A ``rate_limit`` as given by a user (spaces around it ignored), checked: ``ConfigError`` naming
    the problem when it is malformed."""
    cleaned = text.strip() if isinstance(text, str) else text
    try:
        return parse_rate_limit(cleaned).text
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def check_rate_key(rate_key: Any, fn: Callable[..., Any], name: str) -> None:
    """A registration's ``rate_key``: a callable, or the name of one of ``fn``'s parameters."""
    if rate_key is None or callable(rate_key):
        return
    if not isinstance(rate_key, str):
        raise ConfigError(f"task {name!r}: rate_key must be an argument's name or a callable, not {rate_key!r}")
    params = inspect.signature(fn).parameters
    if rate_key not in params and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        raise ConfigError(f"task {name!r}: rate_key {rate_key!r} is not one of its arguments ({', '.join(params)})")


def rate_fields(name: str, opts: TaskOptions, fn: Callable[..., Any] | None, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> dict[str, Any]:
    """The task fields ``rate_limit`` and ``rate_key`` of one submission, from its options."""
    if opts.rate_limit is None:
        return {}
    fields: dict[str, Any] = {"rate_limit": opts.rate_limit}
    key = opts.rate_key
    if callable(key):
        fields["rate_key"] = _key_text(key(*args, **kwargs), name)
    elif isinstance(key, str):
        try:
            bound = inspect.signature(fn).bind_partial(*args, **kwargs).arguments if fn is not None else kwargs
        except TypeError as exc:
            raise ConfigError(f"task {name!r}: cannot read its rate_key {key!r} from the arguments: {exc}") from None
        if key not in bound and key not in kwargs:
            raise ConfigError(f"task {name!r}: its rate_key argument {key!r} was not given")
        fields["rate_key"] = _key_text(bound.get(key, kwargs.get(key)), name)
    return fields


def with_rate_fields(name: str, opts: TaskOptions, fn: Callable[..., Any] | None, args: tuple[Any, ...],
                     kwargs: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any] | None:
    """``extra`` with the submission's rate fields under it (``extra``'s own win), checked."""
    rate = rate_fields(name, opts, fn, args, kwargs)
    if not rate and not (extra and "rate_key" in extra):
        return extra
    merged = {**rate, **(extra or {})}
    if "rate_limit" not in merged:
        raise ConfigError(f"task {name!r}: a rate_key needs a rate_limit")
    if "rate_key" in merged:
        _key_text(merged["rate_key"], name)
    return merged


def _key_text(value: Any, name: str) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    if not 1 <= len(text) <= RATE_KEY_MAX:
        raise ConfigError(f"task {name!r}: rate key {text[:40]!r} must be 1-{RATE_KEY_MAX} characters")
    return text


def requires_field(requires: Iterable[str] | None) -> dict[str, Any]:
    """``{"requires": [...]}``, the labels checked and sorted; empty for no labels."""
    if not requires:
        return {}
    return {"requires": list(check_labels(requires, most=MAX_REQUIRED, kind="requires"))}


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


@dataclass(frozen=True)
class TaskProgress:
    """The latest progress a running task reported (``handle.progress()``)."""

    fraction: float | None
    message: str | None
    attempt: int
    worker: str | None
    ts: float


class TaskHandle:
    """The future result of one submitted task."""

    __slots__ = ("id", "name", "_app", "_future", "_progress", "_following", "__weakref__")

    def __init__(self, app: TaskApp, task_id: str, name: str, future: concurrent.futures.Future[StatusEvent]):
        self.id = task_id
        self.name = name
        self._app = app
        self._future = future
        self._progress: TaskProgress | None = None
        self._following = False

    def cancel(self, reason: str | None = None) -> None:
        """Ask for the task to be cancelled (``P/cancel/{id}``); returns at once. A task not
        started yet ends ``cancelled``; a running one is stopped. ``result()`` then raises
        ``TaskCancelledError``, unless the task had already ended (its outcome stands)."""
        self._app.cancel(self.id, reason)

    def progress(self) -> TaskProgress | None:
        """The latest progress the task reported, or None. The first call starts following the
        task's status events (``P/status/{id}``): progress reported before it is not seen here
        (``mqtt-tasks status ID`` shows the coordinator's latest)."""
        if not self._following:
            self._app.follow(self)
        return self._progress

    def __repr__(self) -> str:
        return f"<TaskHandle {self.name} id={self.id} done={self.done()}>"

    def done(self) -> bool:
        return self._future.done()

    def _resolve(self, event: StatusEvent) -> None:
        if not self._future.done():
            self._future.set_result(event)

    def status(self, timeout: float | None = None) -> StatusEvent:
        """The final status event (blocks up to ``timeout``)."""
        try:
            return self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise ResultTimeoutError(f"no result for task {self.id} within {timeout}s", task_id=self.id) from None

    def result(self, timeout: float | None = None) -> Any:
        """The task's return value, or the error it ended with, raised."""
        return outcome(self.status(timeout))

    async def wait(self, timeout: float | None = None) -> Any:
        """Async ``result``: waits without blocking the event loop."""
        # shield: a timed-out or cancelled wait must not cancel the handle's own future, or the
        # result arriving later would be dropped and every later wait would raise CancelledError
        import asyncio  # here, not at the top: a sync-only worker never loads asyncio (~3.6 MB)

        try:
            event = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self._future)), timeout)
        except asyncio.TimeoutError:
            raise ResultTimeoutError(f"no result for task {self.id} within {timeout}s", task_id=self.id) from None
        return outcome(event)

    def __await__(self) -> Generator[Any, None, Any]:
        return self.wait().__await__()


def task_body(task_id: str, name: str, args: Iterable[Any], kwargs: dict[str, Any] | None, opts: TaskOptions,
              reply_to: str, receipt_to: str | None, extra: dict[str, Any] | None) -> dict[str, Any]:
    """The task as published: the producer's own fields (``extra``) first, the contract's over them."""
    body: dict[str, Any] = {"id": task_id, "task": name, "args": list(args), "kwargs": kwargs or {},
                            "attempt": 1, "reply_to": reply_to}
    if receipt_to is not None:
        body["receipt_to"] = receipt_to
    if opts.timeout is not None:
        body["timeout"] = opts.timeout
    if opts.max_attempts is not None:
        body["max_attempts"] = opts.max_attempts
    if opts.expires is not None:
        body["expires_at"] = time.time() + opts.expires
    if opts.step_timeout is not None:
        body["step_timeout"] = opts.step_timeout
    return {**extra, **body} if extra else body


def outcome(event: StatusEvent) -> Any:
    """Turn a final status event into the value, or raise the matching error."""
    if event.state == SUCCEEDED:
        return event.result
    if event.state == CANCELLED:
        raise TaskCancelledError(f"task {event.id} was cancelled: {event.reason or ''}".strip(), task_id=event.id)
    if event.state == EXPIRED:
        raise TaskExpiredError(f"task {event.id} expired before it started", task_id=event.id)
    err = event.error
    etype = err.type if err else "Error"
    emsg = err.message if err else (event.reason or event.state)
    tb = err.traceback if err else None
    cls = TaskDeadError if event.state == DEAD else SagaCompensatedError if event.state == COMPENSATED \
        else TaskFailedError
    raise cls(event.id, etype, emsg, tb, attempt=event.attempt, status=event.model_dump(exclude_none=True))


class PendingHandles:
    """The handles waiting for a final event, by task id, held weakly: a handle the caller dropped
    (a task sent and forgotten, or one whose result never comes) costs the producer nothing."""

    def __init__(self) -> None:
        self._handles: weakref.WeakValueDictionary[str, TaskHandle] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def add(self, handle: TaskHandle) -> None:
        with self._lock:
            self._handles[handle.id] = handle

    def setdefault(self, handle: TaskHandle) -> TaskHandle:
        """``handle``, or the handle already waiting for its id."""
        with self._lock:
            return self._handles.setdefault(handle.id, handle)

    def pop(self, task_id: str) -> TaskHandle | None:
        with self._lock:
            return self._handles.pop(task_id, None)

    def on_progress(self, event: StatusEvent) -> None:
        """A ``progress`` event: the latest progress of its handle (``TaskHandle.progress``)."""
        with self._lock:
            handle = self._handles.get(event.id)
        if handle is None:
            return
        info = event.progress if isinstance(event.progress, dict) else {"message": str(event.progress)}
        fraction = info.get("fraction")
        message = info.get("message")
        handle._progress = TaskProgress(float(fraction) if isinstance(fraction, (int, float)) else None,
                                        message if isinstance(message, str) else None, event.attempt, event.worker,
                                        event.ts)

    def __len__(self) -> int:
        with self._lock:
            return len(self._handles)


class TaskApp:
    """Registry of tasks and the producer's connection.

    ``TaskApp(broker="mqtt://host:1883", prefix="mqtt-tasks")``; every argument is optional and
    the broker defaults to ``$MQTT_TASKS_BROKER``, then mqtt://127.0.0.1:1883.
    ``receipts``: keep each task sent until a coordinator confirms it recorded it, and re-send it
    to the coordinator when it may have been lost (``receipts.py``; on while a coordinator exists
    on the prefix); ``receipt_policy``: how long and how much. ``client_id``: the MQTT client id,
    replies on ``P/replies/{client_id}``; by default a random one, under the user's own
    ``P/replies/{username}/`` when the settings carry a username (docs/security.md).
    """

    def __init__(
        self,
        broker: str | None = None,
        prefix: str | None = None,
        *,
        settings: Settings | None = None,
        client_id: str | None = None,
        default_queue: str = DEFAULT_QUEUE,
        receipts: bool = True,
        receipt_policy: ReceiptPolicy | None = None,
    ) -> None:
        if settings is None:
            settings = Settings.from_env(broker, prefix=prefix)
        elif prefix is not None:
            settings = settings.with_(prefix=prefix)
        self.settings = settings
        self.topics = Topics(settings.prefix)
        self.default_queue = check_name("queue", default_queue)
        self.registry: dict[str, TaskDef[Any]] = {}
        self.schedules: dict[str, dict[str, Any]] = {}  # declared with @app.periodic (schedules.py)
        self.client_id, self.reply_topic = rpc.producer_address(self.topics, settings.username, client_id,
                                                                uuid.uuid4().hex[:12])
        self.receipt_topic = rpc.receipts_topic(self.reply_topic)
        self._receipts = ReceiptKeeper(self.client_id, receipt_policy or ReceiptPolicy(), self._publish_raw,
                                       self._generation) if receipts else None
        self._record_topics: dict[str, str] = {}
        self._conn: Connection | None = None
        self._conn_lock = threading.Lock()
        self._pending = PendingHandles()

    # -- registration ----------------------------------------------------------------
    def task(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        queue: str | None = None,
        timeout: float | None = None,
        max_attempts: int | None = None,
        expires: float | None = None,
        step_timeout: float | None = None,
        rate_limit: str | None = None,
        rate_key: str | Callable[..., Any] | None = None,
    ) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(name=..., queue=...)``.

        ``step_timeout``: with a coordinator, a started attempt that reports no progress
        (``current_task().progress``) for this many seconds is presumed hung, stopped and tried again.
        ``rate_limit``: ``"COUNT/UNIT"`` (``"10/s"``, ``"100/m"``, ``"1000/h"``, ``"5/10s"``): the
        coordinator dispatches at most COUNT of these tasks in any such window, across the fleet;
        ``rate_key``: per key instead, the key being the argument of that name, or
        ``rate_key(*args, **kwargs)`` (docs/scheduling.md, "Rate limits")."""
        def register(func: Callable[..., R]) -> TaskDef[R]:
            task_name = name or func.__name__
            if not _TASK_NAME_RE.match(task_name):
                raise ConfigError(f"invalid task name {task_name!r}")
            if task_name in self.registry:
                raise ConfigError(f"a task named {task_name!r} is already registered")
            if rate_key is not None and rate_limit is None:
                raise ConfigError(f"task {task_name!r}: rate_key needs a rate_limit")
            check_rate_key(rate_key, func, task_name)
            limit = check_rate_limit(rate_limit) if rate_limit is not None else None
            opts = TaskOptions(queue=check_name("queue", queue or self.default_queue), timeout=timeout,
                               max_attempts=max_attempts, expires=expires, step_timeout=step_timeout,
                               rate_limit=limit, rate_key=rate_key)
            tdef: TaskDef[R] = TaskDef(self, func, task_name, opts)
            self.registry[task_name] = tdef
            return tdef

        return register(fn) if fn is not None else register

    def periodic(self, *, cron: str | None = None, every: int | None = None, name: str | None = None,
                 args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None, **options: Any) -> Any:
        """Declare a periodic task: ``@app.periodic(every=60)`` or ``@app.periodic(cron="0 3 * * *")``,
        on a function or above ``@app.task(...)``. The app's workers register it with the coordinator
        (docs/scheduling.md)."""
        from .schedules import periodic

        return periodic(self, cron=cron, every=every, name=name, args=tuple(args), kwargs=kwargs, **options)

    @property
    def queues(self) -> list[str]:
        """The queues of the registered tasks (``default`` when none)."""
        return sorted({t.options.queue for t in self.registry.values()}) or [self.default_queue]

    # -- producing ---------------------------------------------------------------------
    def send(
        self,
        name: str,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        options: TaskOptions | None = None,
        task_id: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> TaskHandle:
        """Publish a task by name (it need not be registered here) and return its handle."""
        registered = self.registry.get(name)
        if options is None:
            options = registered.options if registered else TaskOptions(queue=self.default_queue)
        opts = options
        task_id = task_id or uuid.uuid4().hex
        if not is_valid_id(task_id):
            raise ConfigError(f"invalid task id {task_id!r}: 1-128 characters of A-Z a-z 0-9 _ . : -")
        extra = with_rate_fields(name, opts, registered.fn if registered else None, tuple(args), kwargs or {}, extra)
        if tracing.sending_traced():  # the send is a span, and its context travels with the task
            with tracing.send_span(name, task_id, opts.queue) as carrier:
                return self._publish(name, task_id, args, kwargs, opts, {**(extra or {}), **carrier} or None,
                                     tracing.properties_of(carrier) or None)
        return self._publish(name, task_id, args, kwargs, opts, extra, None)

    def _publish(self, name: str, task_id: str, args: Iterable[Any], kwargs: dict[str, Any] | None,
                 opts: TaskOptions, extra: dict[str, Any] | None,
                 user_properties: list[tuple[str, str]] | None) -> TaskHandle:
        keeping = self._receipts is not None and self._receipts.keeping
        body = task_body(task_id, name, args, kwargs, opts, self.reply_topic,
                         self.receipt_topic if keeping else None, extra)
        # reply_to and the id in the body say what Response Topic and Correlation Data would;
        # leaving the MQTT 5 properties off saves building them for every task.
        return self._tracked(name, self.topics.tasks(opts.queue), body, self._record_topic(opts.queue) if keeping
                             else None, expiry=int(opts.expires) + 1 if opts.expires else None,
                             user_properties=user_properties)

    def send_tracked(self, topic: str, message: dict[str, Any], name: str) -> TaskHandle:
        """Publish a workflow (``canvas.py``) on ``topic``; the handle waits for its final event. With receipts
        on, it is kept (re-sent to ``topic``) until the coordinator recorded it, even with none known yet."""
        keeping = self._receipts is not None
        message = {**message, "receipt_to": self.receipt_topic} if keeping else message
        return self._tracked(name, topic, message, topic if keeping else None, needs_coordinator=True)

    def _tracked(self, name: str, topic: str, message: dict[str, Any], resend_to: str | None,
                 needs_coordinator: bool = False, **publish: Any) -> TaskHandle:
        """Sign (when signing is on) and publish ``message``; kept for a receipt (and re-sent to
        ``resend_to``) unless that is None."""
        if self.settings.signing_key is not None:
            message = signing.sign(message, self.settings.signing_key)
        payload = codec.encode(message)
        conn = self.connection()
        handle = TaskHandle(self, message["id"], name, concurrent.futures.Future())
        self._pending.add(handle)
        keeper = self._receipts if resend_to is not None else None
        if keeper is not None and resend_to is not None:  # kept first: its receipt may come back at once
            keeper.keep(handle.id, resend_to, payload, needs_coordinator=needs_coordinator)
        try:
            conn.publish(topic, payload, **publish)
        except Exception:
            self._pending.pop(handle.id)
            if keeper is not None:
                keeper.forget(handle.id)
            raise
        return handle

    def _record_topic(self, queue: str) -> str:
        topic = self._record_topics.get(queue)
        return topic if topic is not None else self._record_topics.setdefault(queue, self.topics.record(queue))

    def submit(self, name: str, *args: Any, **kwargs: Any) -> TaskHandle:
        """``app.submit("add", 2, 3)``: submit by name, with positional and keyword arguments."""
        return self.send(name, args, kwargs)

    # -- connection --------------------------------------------------------------------
    def connection(self) -> Connection:
        """The producer's connection, made on first use."""
        conn = self._conn
        if conn is not None:
            return conn
        with self._conn_lock:
            if self._conn is None:
                keeper = self._receipts
                conn = Connection(self.settings, self.client_id, on_message=self._on_message, receive_maximum=65535,
                                  on_connect=(lambda _first: keeper.connected()) if keeper else None)
                conn.subscribe(self.reply_topic)
                if keeper is not None:
                    conn.subscribe(self.receipt_topic)
                    conn.subscribe(self.topics.coordinator)
                conn.connect()
                self._conn = conn
            return self._conn

    def connect(self) -> TaskApp:
        self.connection()
        return self

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every task published so far is acknowledged by the broker."""
        return self._conn.flush(timeout) if self._conn is not None else True

    def wait_recorded(self, timeout: float = 30.0) -> bool:
        """Wait until a coordinator has recorded every task sent so far (or none exists, or a task
        was given up: see ``receipts``); False on timeout. ``close`` does not wait for it."""
        return self._receipts.wait_recorded(timeout) if self._receipts is not None else True

    @property
    def unconfirmed(self) -> int:
        """Tasks sent and kept here until the coordinator's receipt comes."""
        return len(self._receipts.unconfirmed) if self._receipts is not None else 0

    def _publish_raw(self, topic: str, payload: bytes) -> None:
        conn = self._conn
        if conn is not None:
            conn.publish(topic, payload)

    def _generation(self) -> int:
        conn = self._conn
        return conn.generation if conn is not None else 0

    def close(self) -> None:
        if self._receipts is not None:
            self._receipts.stop()
        with self._conn_lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> TaskApp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- replies (network thread: decode and resolve, nothing else) ----------------------
    def _on_message(self, message: Message) -> None:
        keeper = self._receipts
        if keeper is not None:
            if message.topic == self.receipt_topic:
                keeper.on_receipt(message)
                return
            if message.topic == self.topics.coordinator:
                keeper.on_presence(message)
                return
        self._on_reply(message)

    def _on_reply(self, message: Message) -> None:
        try:
            event = codec.decode_status(message.payload, topic=message.topic,
                                        max_payload=self.settings.max_payload)
        except DecodeError as exc:
            log.warning("undecodable reply on %s: %s", message.topic, exc)
            return
        if message.topic.startswith(self.topics.status_root) and not event.final:
            if event.state == PROGRESS:
                self._pending.on_progress(event)
            return  # a handle following P/status/{id} (``handle``) waits for the final event only
        handle = self._pending.pop(event.id)
        if handle is not None:
            handle._resolve(event)

    def handle(self, task_id: str, name: str = "") -> TaskHandle:
        """A handle for a task submitted earlier, possibly by another process.

        Follows ``P/status/{task_id}`` for the final event and asks the coordinator (``P/rpc/query``)
        for it, in case the task finished before this call: ``result()`` works either way while a
        coordinator runs.
        """
        if not is_valid_id(task_id):
            raise ConfigError(f"invalid task id {task_id!r}")
        conn = self.connection()
        future: concurrent.futures.Future[StatusEvent] = concurrent.futures.Future()
        handle = TaskHandle(self, task_id, name, future)
        existing = self._pending.setdefault(handle)
        if existing is not handle:
            return existing  # another handle already waits for this id
        self.follow(handle)
        conn.publish(self.topics.rpc_query, codec.encode({"op": "result", "id": task_id, "reply_to": self.reply_topic}))
        return handle

    def follow(self, handle: TaskHandle) -> None:
        """Follow ``P/status/{id}`` for ``handle``: its progress, and its final event (until it comes)."""
        if handle._following or handle.done():
            return
        handle._following = True
        conn = self.connection()
        status_topic = self.topics.status(handle.id)
        conn.subscribe(status_topic)
        handle._future.add_done_callback(lambda _f: conn.unsubscribe(status_topic))
        weakref.finalize(handle, conn.unsubscribe, status_topic)  # dropped before its result came

    def cancel(self, task_id: str, reason: str | None = None) -> None:
        """Ask for ``task_id`` to be cancelled: one message on ``P/cancel/{task_id}``, read by the
        coordinator (which ends the task) and by every worker (which stops it if it holds it)."""
        if not is_valid_id(task_id):
            raise ConfigError(f"invalid task id {task_id!r}")
        self.connection().publish(self.topics.cancel(task_id), codec.encode(events.cancel_request(reason=reason)))

    @property
    def awaiting(self) -> int:
        """How many handles are waiting for a final event (handles the caller dropped do not count)."""
        return len(self._pending)

