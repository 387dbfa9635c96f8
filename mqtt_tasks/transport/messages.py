"""What crosses the transport boundary: plain dataclasses, free of paho types.

A ``Message`` is what the owner's ``on_message`` receives; a ``Will`` is the Last Will a
connection leaves with the broker. Neither imports paho, so nothing above this package sees an
``MQTTMessage`` or a ``Properties`` object.

Fact this module is built on (docs/broker-facts.md): message ids restart after a reconnect,
so every incoming message carries the ``generation`` of the connection it arrived on, and an ack
from an older connection can be told apart and dropped (inflight.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Message:
    """An incoming message, free of paho types."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    generation: int
    response_topic: str | None = None
    correlation_data: bytes | None = None
    expiry: int | None = None
    user_properties: tuple[tuple[str, str], ...] = ()  # MQTT 5 only (tracing.py)


@dataclass(frozen=True, slots=True)
class Will:
    """The Last Will the broker publishes when the connection drops without a DISCONNECT."""

    topic: str
    payload: bytes
    retain: bool = True
    qos: int = 1
