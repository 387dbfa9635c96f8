"""Messages in flight, both ways: our QoS 1 publishes until their PUBACK, and received messages
until the owner acknowledges them.

Outgoing, ``Inflight`` keeps the set of publishes not yet acknowledged by the broker: the fence
``Connection.flush`` waits on. A PUBACK may be handled on the network thread before ``publish``
has recorded its mid (paho sends at once when it can), so such an early ack is remembered and
cancels the record instead of leaving it outstanding forever.

Incoming, every message is stamped with the connection's generation (incremented on every
successful connect) and handed to the owner's ``on_message``; with ``manual_ack`` the owner acks
it later, alone (``ack``) or in a batch (``ack_many``, one write for hundreds of PUBACKs).

Facts this module is built on (docs/broker-facts.md): message ids restart after a reconnect,
so an ack of a message from an older connection is dropped (it would acknowledge another
message); with QoS 2 the broker counts a message as delivered at PUBREC, so tasks use QoS 1;
paho queues each PUBACK as its own packet, with its own wake-up of the network thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as paho

from .messages import Message
from .paho_internals import TunedClient

log = logging.getLogger(__name__)


class Inflight:
    """Outstanding publishes (the ack fence), connection generations and acks of received messages.

    ``on_puback``, ``deliver`` and ``on_paho_message`` are paho callbacks (wrapped by the
    connection); they run on the network thread and only record or hand off.
    """

    def __init__(self, client_id: str, *, manual_ack: bool, on_message: Callable[[Message], None] | None,
                 on_rejected: Callable[[int, str], None] | None = None) -> None:
        self._client_id = client_id
        self._on_rejected = on_rejected
        self._manual_ack = manual_ack
        self._on_message_cb = on_message
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._outstanding: set[int] = set()
        self._early_acks: set[int] = set()
        self._generation = 0

    # -- connections ----------------------------------------------------------------------
    @property
    def generation(self) -> int:
        """Incremented on every successful connect."""
        return self._generation

    def new_connection(self) -> bool:
        """A successful connect: the next generation. True for the first connection."""
        with self._lock:
            self._generation += 1
            return self._generation == 1

    # -- our publishes --------------------------------------------------------------------
    def sent(self, mid: int, qos: int) -> None:
        """``publish`` queued message ``mid``: track it until its PUBACK (QoS 1)."""
        with self._lock:
            if mid in self._early_acks:
                self._early_acks.discard(mid)
            elif qos > 0:
                self._outstanding.add(mid)

    def on_puback(self, client: paho.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        code = int(getattr(rc, "value", rc) or 0)
        if code >= 0x80 and self._on_rejected is not None:
            log.debug("%s: broker rejected publish mid %s: %s", self._client_id, mid, rc)
            self._on_rejected(mid, str(rc))
        elif code >= 0x80:
            log.error("%s: broker rejected publish mid %s: %s", self._client_id, mid, rc)
        with self._idle:
            if mid in self._outstanding:
                self._outstanding.discard(mid)
                if not self._outstanding:
                    self._idle.notify_all()
            else:
                self._early_acks.add(mid)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every QoS 1 publish so far is acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._outstanding:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    @property
    def outstanding(self) -> int:
        return len(self._outstanding)

    # -- received messages ----------------------------------------------------------------
    def on_paho_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        """paho's own decoding path (QoS 2, topic aliases): the same hand-off as ``deliver``."""
        self.deliver(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), msg.mid,
                     getattr(msg, "properties", None))

    def deliver(self, topic: str, payload: bytes, qos: int, retain: bool, mid: int, props: Any) -> None:
        if self._on_message_cb is None:
            return
        if props is None:
            self._on_message_cb(Message(topic, payload, qos, retain, mid, self._generation))
            return
        self._on_message_cb(Message(topic, payload, qos, retain, mid, self._generation,
                                    getattr(props, "ResponseTopic", None), getattr(props, "CorrelationData", None),
                                    getattr(props, "MessageExpiryInterval", None),
                                    tuple(getattr(props, "UserProperty", None) or ())))

    def ack(self, client: TunedClient, message: Message) -> None:
        """Acknowledge a QoS 1 message taken with ``manual_ack``; acks from an older connection are dropped."""
        if not self._manual_ack or message.qos == 0:
            return
        if message.generation != self._generation:
            log.debug("dropping ack of mid %s from connection %s", message.mid, message.generation)
            return
        client.ack(message.mid, message.qos)

    def ack_many(self, client: TunedClient, messages: Iterable[Message]) -> None:
        """Acknowledge a batch of messages taken with ``manual_ack``, the QoS 1 ones in one write."""
        if not self._manual_ack:
            return
        generation = self._generation
        mids = [m.mid for m in messages if m.qos == 1 and m.generation == generation]
        for message in messages:
            if message.qos == 2:
                self.ack(client, message)
        client.ack_qos1_batch(mids)
