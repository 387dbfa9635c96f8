"""The embedded MQTT broker: amqtt 0.12.1 plus MQTT shared subscriptions.

Workers take tasks through a shared subscription (``$share/<group>/<filter>``), which amqtt
does not implement: it grants such a filter, stores it literally and never matches it.
``_SharedSubscriptionBroker`` adds them; ``EmbeddedBroker`` runs it on a thread of its own so
that synchronous code (tests, the demo, ``mqtt-tasks broker``) can use it::

    with EmbeddedBroker() as broker:        # 127.0.0.1, an ephemeral port
        app = TaskApp(broker.url)

amqtt is an optional extra (``pip install 'mqtt-tasks[broker]'``); nothing else in the package
imports this module at import time. amqtt speaks MQTT 3.1.1 only.

Logging: starting an ``EmbeddedBroker`` sets the ``amqtt`` and ``transitions`` loggers to
WARNING, unless the application has already given them a level. No handler is installed and
the root logger is left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

try:
    from amqtt.broker import Broker
    from amqtt.contexts import Action
    from amqtt.mqtt.constants import QOS_1, QOS_2
    from amqtt.session import Session
except ImportError as exc:  # pragma: no cover - exercised in a test with amqtt hidden
    raise ImportError(
        "the embedded MQTT broker needs amqtt: pip install 'mqtt-tasks[broker]'",
        name="amqtt",
    ) from exc

from .signals import SignalLatch

__all__ = ["EmbeddedBroker", "run_broker"]

logger = logging.getLogger(__name__)

_SHARE_PREFIX = "$share/"
_SUBACK_FAILURE = 0x80
_START_TIMEOUT = 10.0
# amqtt waits up to 5 s for its broadcast loop to finish while shutting down.
_STOP_TIMEOUT = 10.0
_NOISY_LOGGERS = ("amqtt", "transitions")
_WILDCARD_HOSTS = {"", "0.0.0.0", "::"}


def split_shared_filter(topic_filter: str) -> tuple[str, str] | None:
    """``"$share/g/a/+"`` -> ``("g", "a/+")``; ``None`` for a filter that is not shared.

    Raises ``ValueError`` for a malformed shared filter (empty group or filter, or a wildcard
    in the group name), which the broker refuses at subscribe time.
    """
    if not topic_filter.startswith(_SHARE_PREFIX):
        return None
    group, _, inner = topic_filter[len(_SHARE_PREFIX) :].partition("/")
    if not group or not inner or any(char in group for char in "+#"):
        raise ValueError(f"malformed shared subscription filter: {topic_filter!r}")
    return group, inner


class _SharedSubscriptionBroker(Broker):
    """amqtt's Broker with ``$share/<group>/<filter>`` subscriptions.

    Each message matching ``<filter>`` goes to exactly one *connected* member of the group,
    round-robin; with no member connected it is dropped (as Mosquitto does). Retained messages
    are never sent to a shared subscription (MQTT 5, 3.8.4). Normal subscriptions behave as in
    amqtt, and a client with both kinds of matching subscription gets one copy per subscription.
    Unlike amqtt, a connecting client is not sent retained messages for other clients' filters.

    This relies on amqtt 0.12.1 private API (``_run_broadcast``, ``_subscriptions``,
    ``_matches``, ``_get_handler``, ``_topic_filtering``, ``_retain_broadcast_message``,
    ``_publish_retained_messages_for_subscription``, ``_initialize_client_session`` and the
    handler's ``handle_read_timeout`` and ``writer``). The version is pinned in pyproject.toml
    and tests/test_embedded_broker.py pins the behaviour.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._share_turns: dict[str, int] = {}  # shared filter -> deliveries made so far

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        try:
            split_shared_filter(subscription[0])
        except ValueError:
            return _SUBACK_FAILURE
        return int(await super().add_subscription(subscription, session))

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        # amqtt calls this on every connect for *every* filter in the broker, so a new client
        # gets retained messages for other clients' subscriptions: only serve the session's own.
        topic_filter = subscription[0]
        if topic_filter.startswith(_SHARE_PREFIX) or not self._holds(session, topic_filter):
            return
        await super()._publish_retained_messages_for_subscription(subscription, session)

    async def _initialize_client_session(self, *args: Any, **kwargs: Any) -> tuple[Any, Session]:
        """Keep-alive enforced (MQTT 3.1.1, 3.1.2.10): a client silent for 1.5 x its keep-alive is
        dropped, so its Last Will goes out. amqtt 0.12.1 reads with that timeout and then does
        nothing (``handle_read_timeout`` is a no-op): a worker whose host lost power stayed
        "online" for ever. Its reader loop ends on end-of-stream, which closing the writer gives."""
        handler, session = await super()._initialize_client_session(*args, **kwargs)
        if session.keep_alive > 0:  # the client's own (amqtt 0.12.1 adds no disconnect delay)
            session.keep_alive = math.ceil(session.keep_alive * 1.5)
            handler.handle_read_timeout = functools.partial(_drop_silent_client, handler, session)
        return handler, session

    def _holds(self, session: Session, topic_filter: str) -> bool:
        subscribers = self._subscriptions.get(topic_filter, [])
        return any(held.client_id == session.client_id for held, _ in subscribers)

    async def _run_broadcast(self, running_tasks: deque[asyncio.Task[Any]]) -> None:
        """Deliver one queued message (replaces amqtt's own loop body)."""
        broadcast = await self._broadcast_queue.get()
        topic = broadcast["topic"]
        # Copies: the awaits below let subscribe/unsubscribe change these while we iterate.
        for topic_filter, subscriptions in list(self._subscriptions.items()):
            shared = split_shared_filter(topic_filter)
            if shared is None:
                targets = list(subscriptions) if self._matches(topic, topic_filter) else []
            elif self._matches(topic, shared[1]):
                targets = self._next_member(topic_filter, subscriptions)
            else:
                targets = []
            for session, sub_qos in targets:
                await self._deliver(broadcast, session, sub_qos, running_tasks)

    def _next_member(self, shared_filter: str, members: list[tuple[Session, int]]) -> list[tuple[Session, int]]:
        """The connected member whose turn it is, as a list of zero or one."""
        connected = [member for member in members if member[0].transitions.state == "connected"]
        if not connected:
            return []
        turn = self._share_turns.get(shared_filter, 0)
        self._share_turns[shared_filter] = turn + 1
        return [connected[turn % len(connected)]]

    async def _deliver(
        self,
        broadcast: dict[str, Any],
        session: Session,
        sub_qos: int,
        running_tasks: deque[asyncio.Task[Any]],
    ) -> None:
        """amqtt 0.12.1's per-subscriber step of ``_run_broadcast``, unchanged."""
        topic, qos = broadcast["topic"], broadcast.get("qos", sub_qos)
        if not await self._topic_filtering(session, topic=topic, action=Action.RECEIVE):
            return
        if session.transitions.state != "connected":
            # Queue for an offline persistent (non-anonymous) session, as amqtt does.
            if not session.clean_session and qos in (QOS_1, QOS_2) and not session.is_anonymous:
                await self._retain_broadcast_message(broadcast, qos, session)
            return
        handler = self._get_handler(session)
        if handler:
            publish = handler.mqtt_publish(topic, broadcast["data"], qos, retain=False)
            running_tasks.append(asyncio.ensure_future(publish))


def _drop_silent_client(handler: Any, session: Session) -> None:
    logger.info("embedded broker: client %s silent for %s s (1.5 x keep-alive): dropping it",
                session.client_id, session.keep_alive)
    writer = handler.writer
    if writer is not None:
        asyncio.get_running_loop().create_task(writer.close())


class EmbeddedBroker:
    """An amqtt broker with shared subscriptions, run on a dedicated thread.

    ``port=0`` (the default) binds an ephemeral port; read it back from ``port`` or ``url``.
    ``websocket_port`` adds a WebSocket listener on the same host. ``start()`` blocks until the
    broker listens; ``stop()`` blocks until it has shut down and may be called more than once.
    A stopped broker can be started again. Anonymous clients are allowed: bind it to a public
    interface only on a trusted network.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, websocket_port: int | None = None) -> None:
        self._host = host
        self._requested_port = port
        self._requested_websocket_port = websocket_port
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._broker: _SharedSubscriptionBroker | None = None
        self._port: int | None = None
        self._websocket_port: int | None = None

    @property
    def port(self) -> int:
        """The TCP port the broker listens on (the real one when 0 was asked for)."""
        if self._port is None:
            raise RuntimeError("the embedded broker is not running")
        return self._port

    @property
    def websocket_port(self) -> int | None:
        """The WebSocket listener's real port, or ``None`` when there is none."""
        return self._websocket_port

    @property
    def url(self) -> str:
        """``mqtt://<host>:<port>``, with a wildcard bind address replaced by loopback."""
        host = "127.0.0.1" if self._host in _WILDCARD_HOSTS else self._host
        if ":" in host:
            host = f"[{host}]"
        return f"mqtt://{host}:{self.port}"

    def connected_client_ids(self) -> set[str]:
        """Ids of the clients connected right now (read on the broker's own loop)."""
        loop, broker = self._loop, self._broker
        if loop is None or broker is None:
            return set()
        future = asyncio.run_coroutine_threadsafe(_connected_client_ids(broker), loop)
        return future.result(timeout=_START_TIMEOUT)

    def start(self) -> EmbeddedBroker:
        """Start listening; block until the broker accepts connections. Returns ``self``."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("the embedded broker is already running")
            _quiet_noisy_loggers()
            ready: Future[None] = Future()
            thread = threading.Thread(target=self._run, args=(ready,), name="mqtt-tasks-broker", daemon=True)
            thread.start()
            try:
                ready.result(timeout=_START_TIMEOUT)
            except Exception as exc:
                self._request_stop()  # in case it is only slow
                thread.join(_STOP_TIMEOUT)
                self._loop = self._stop_requested = None
                raise _start_error(self._host, self._requested_port, exc) from exc
            self._thread = thread
        logger.info("embedded MQTT broker listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Shut the broker down and wait for its thread. Does nothing if it is not running."""
        with self._lock:
            thread = self._thread
            if thread is None:
                return
            self._request_stop()
            thread.join(_STOP_TIMEOUT)
            if thread.is_alive():
                logger.warning("embedded MQTT broker did not stop within %.0f s", _STOP_TIMEOUT)
            self._thread = self._loop = self._stop_requested = None
            self._port = self._websocket_port = None
        logger.info("embedded MQTT broker stopped")

    def _request_stop(self) -> None:
        loop, stop_requested = self._loop, self._stop_requested
        if loop is not None and stop_requested is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already closed
                loop.call_soon_threadsafe(stop_requested.set)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, ready: Future[None]) -> None:
        """Body of the broker thread: one event loop, from start to shutdown."""
        try:
            asyncio.run(self._serve(ready))
        except BaseException as exc:
            if ready.done():
                logger.exception("embedded MQTT broker failed while running")
            else:
                ready.set_exception(exc)

    async def _serve(self, ready: Future[None]) -> None:
        # amqtt's Broker must be created inside the running loop it will use.
        self._loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        broker = _SharedSubscriptionBroker(self._config())
        try:
            await broker.start()
        except Exception:
            # amqtt leaves the listeners it did open running when a later one fails.
            for server in broker._servers.values():
                await server.close_instance()
            raise
        self._port = _listening_port(broker, "default")
        if self._requested_websocket_port is not None:
            self._websocket_port = _listening_port(broker, "ws")
        self._broker = broker
        ready.set_result(None)
        await self._stop_requested.wait()
        self._broker = None
        for server in broker._servers.values():  # free the ports first: the rest of a shutdown can be slow
            if server.instance is not None:
                server.instance.close()
        await broker.shutdown()

    def _config(self) -> dict[str, Any]:
        listeners: dict[str, Any] = {
            "default": {"type": "tcp", "bind": f"{self._host}:{self._requested_port}"},
        }
        if self._requested_websocket_port is not None:
            bind = f"{self._host}:{self._requested_websocket_port}"
            listeners["ws"] = {"type": "ws", "bind": bind}
        # Only anonymous auth: amqtt's default plugins add $SYS publishing and event logging.
        plugins = {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}
        return {"listeners": listeners, "plugins": plugins}


def run_broker(
    host: str = "127.0.0.1",
    port: int = 1883,
    *,
    ready: Callable[[EmbeddedBroker], None] | None = None,
) -> None:
    """Run in the foreground until SIGINT/SIGTERM (used by `mqtt-tasks broker --port P`).

    ``ready`` is called with the running broker once it listens. Call from the main thread:
    it installs handlers for SIGINT and SIGTERM (``SignalLatch``: a second SIGINT while stopping
    exits at once) and restores the previous ones on return.
    """
    with SignalLatch() as latch, EmbeddedBroker(host, port) as broker:
        if ready is not None:
            ready(broker)
        latch.event.wait()
        logger.info("received %s, stopping the embedded MQTT broker", latch.signame)


def _listening_port(broker: Broker, listener: str) -> int:
    """The port a listener really bound (amqtt 0.12.1 keeps servers in ``_servers``)."""
    sockets = list(broker._servers[listener].instance.sockets)
    return int(sockets[0].getsockname()[1])


async def _connected_client_ids(broker: Broker) -> set[str]:
    return {
        client_id for client_id, (session, _) in broker.sessions.items() if session.transitions.state == "connected"
    }


def _quiet_noisy_loggers() -> None:
    """amqtt logs every connection at INFO; keep WARNING unless the application chose a level.
    Its traceback for a failed start is dropped: ``start`` raises one clear error instead."""
    for name in _NOISY_LOGGERS:
        noisy = logging.getLogger(name)
        if noisy.level == logging.NOTSET:
            noisy.setLevel(logging.WARNING)
    startup = logging.getLogger("amqtt.broker")
    if _STARTUP_FAILURE not in startup.filters:
        startup.addFilter(_STARTUP_FAILURE)


class _DropStartupFailure(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Broker startup failed")


_STARTUP_FAILURE = _DropStartupFailure()


def _start_error(host: str, port: int, exc: BaseException) -> Exception:
    """An OSError when the address could not be bound (amqtt wraps it), else a RuntimeError."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    where = f"{host}:{port}"
    if isinstance(cause, OSError):
        reason = os.strerror(cause.errno) if cause.errno else str(cause)
        return OSError(cause.errno, f"embedded MQTT broker cannot listen on {where}: {reason.lower()}")
    return RuntimeError(f"embedded MQTT broker failed to start on {where}: {exc}")
