"""Typed settings. The environment is read here only, and only when asked (``from_env``)."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field, replace
from typing import Literal
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from .errors import ConfigError
from .protocol.codec import DEFAULT_MAX_PAYLOAD
from .protocol.topics import DEFAULT_PREFIX, check_prefix

ENV_BROKER = "MQTT_TASKS_BROKER"
ENV_SIGNING_KEY = "MQTT_TASKS_SIGNING_KEY"
DEFAULT_BROKER = "mqtt://127.0.0.1:1883"
DEFAULT_STARTED_AFTER = 0.1
"""A worker publishes a task's `started` event once it has run this long (0: at once); a task that
finishes sooner is reported by its final event alone."""
DEFAULT_DEFER_AFTER = 0.25
"""A task not expected to get a free slot in a busy worker within this many seconds of its arrival
is handed to the coordinator (when one is online), which gives it to a worker with a free slot."""

Protocol = Literal["auto", "5", "3.1.1"]
_SCHEMES = {"mqtt": (False, "tcp", 1883), "tcp": (False, "tcp", 1883),
            "mqtts": (True, "tcp", 8883), "ssl": (True, "tcp", 8883),
            "ws": (False, "websockets", 80), "wss": (True, "websockets", 443)}
_PROTOCOLS = {"auto": "auto", "5": "5", "mqtt5": "5", "v5": "5",
              "3.1.1": "3.1.1", "3": "3.1.1", "311": "3.1.1", "mqtt311": "3.1.1", "v311": "3.1.1"}


@dataclass(frozen=True)
class TLSSettings:
    """TLS for ``mqtts://`` and ``wss://``. Hostname checking is on unless ``insecure``."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False

    def context(self) -> ssl.SSLContext:
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
            if self.cert_file:
                ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"TLS setup failed: {exc}") from exc
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


@dataclass(frozen=True)
class Settings:
    """How to reach the broker and how to talk on it. Build with ``Settings.from_url``."""

    host: str = "127.0.0.1"
    port: int = 1883
    transport: Literal["tcp", "websockets"] = "tcp"
    ws_path: str = "/mqtt"
    tls: TLSSettings | None = None
    username: str | None = None
    password: str | None = None
    prefix: str = DEFAULT_PREFIX
    protocol: Protocol = "auto"
    keepalive: int = 30
    connect_timeout: float = 10.0
    max_payload: int = DEFAULT_MAX_PAYLOAD
    heartbeat_s: float = 2.0
    signing_key: str | bytes | None = field(default=None, repr=False)
    """Shared secret for HMAC-SHA256 task signatures (docs/security.md); None: tasks are not signed."""
    url: str = field(default=DEFAULT_BROKER, compare=False)

    @classmethod
    def from_url(cls, url: str | None = None, **overrides: object) -> Settings:
        """``mqtt://user:pass@host:1883?protocol=5&prefix=p&keepalive=30``; also mqtts, ws, wss.

        TLS options come as query parameters (``ca=``, ``cert=``, ``key=``, ``insecure=1``)
        or through ``tls=TLSSettings(...)``.
        """
        url = url or DEFAULT_BROKER
        if "://" not in url:
            url = "mqtt://" + url
        parts = _split_url(url)
        scheme = parts.scheme.lower()
        secure, transport, default_port = _SCHEMES[scheme]
        try:
            port = parts.port or default_port
        except ValueError as exc:
            raise ConfigError(f"invalid port in broker URL {url!r}") from exc
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        values: dict[str, object] = {
            "host": parts.hostname, "port": port, "transport": transport, "url": url,
            "username": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password else None,
        }
        if transport == "websockets":
            values["ws_path"] = parts.path or "/mqtt"
        if secure:
            values["tls"] = TLSSettings(
                ca_file=query.get("ca"), cert_file=query.get("cert"), key_file=query.get("key"),
                insecure=query.get("insecure", "0").lower() in ("1", "true", "yes"),
            )
        if "protocol" in query:
            values["protocol"] = query["protocol"]
        if "prefix" in query:
            values["prefix"] = query["prefix"]
        if "keepalive" in query:
            values["keepalive"] = _keepalive(query["keepalive"], url)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if not secure and values.get("tls") is not None:
            raise ConfigError(f"TLS options given for a plain {scheme}:// URL; use mqtts:// or wss://")
        return cls(**values).validated()  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, url: str | None = None, **overrides: object) -> Settings:
        """Like ``from_url``, defaulting to ``$MQTT_TASKS_BROKER``, then mqtt://127.0.0.1:1883.

        ``$MQTT_TASKS_SIGNING_KEY``, when set and non-empty, becomes ``signing_key``.
        """
        overrides.setdefault("signing_key", os.environ.get(ENV_SIGNING_KEY) or None)
        return cls.from_url(url or os.environ.get(ENV_BROKER) or DEFAULT_BROKER, **overrides)

    def validated(self) -> Settings:
        protocol = _PROTOCOLS.get(str(self.protocol).lower())
        if protocol is None:
            raise ConfigError(f"unknown MQTT protocol {self.protocol!r}: use auto, 5 or 3.1.1")
        try:
            check_prefix(self.prefix)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if not 1024 <= self.max_payload <= 256 * 1024 * 1024:
            raise ConfigError("max_payload must be between 1 KiB and 256 MiB")
        if self.heartbeat_s <= 0:
            raise ConfigError("heartbeat_s must be positive")
        if self.signing_key is not None and len(self.signing_key) < 16:
            raise ConfigError("signing_key must be at least 16 bytes (use e.g. `openssl rand -hex 32`)")
        return replace(self, protocol=protocol)  # type: ignore[arg-type]

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes).validated()  # type: ignore[arg-type]

    @property
    def display_url(self) -> str:
        """The URL without its password, for logs and messages."""
        scheme = {"tcp": "mqtt", "websockets": "ws"}[self.transport] + ("s" if self.tls else "")
        user = f"{self.username}@" if self.username else ""
        return f"{scheme}://{user}{self.host}:{self.port}"


def _keepalive(value: str, url: str) -> int:
    """``keepalive=`` seconds: how soon a silent link is noticed (both ends; the broker after 1.5x)."""
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise ConfigError(f"keepalive must be whole seconds from 1 to 65535, not {value!r}, in {url!r}")
    return int(value)


def _split_url(url: str) -> SplitResult:
    """The URL's parts, or a ConfigError saying what is wrong with it."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. "Invalid IPv6 URL" for mqtt://[::1
        raise ConfigError(f"malformed broker URL {url!r}: {exc}") from None
    if parts.scheme.lower() not in _SCHEMES:
        raise ConfigError(f"unsupported broker URL scheme {parts.scheme.lower()!r} in {url!r}: "
                          "use mqtt, mqtts, ws or wss")
    if not parts.hostname:
        raise ConfigError(f"no host in broker URL {url!r}")
    return parts
