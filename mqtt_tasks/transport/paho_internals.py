"""Every use of paho's private attributes and methods, in one module: nowhere else touches them.

``TunedClient`` is paho's ``Client`` with fewer system calls and thread wake-ups per message
(buffered reads, coalesced wake-ups, a fast decoding of QoS 0/1 PUBLISH and of 2-byte PUBACK
packets), plus the few small operations paho has no public way to do: naming its network
thread, changing the in-flight window while connected, setting TCP_NODELAY on a WebSocket's
socket, queueing a batch of PUBACKs as one write.

Versions: written against paho-mqtt 2.2.0 and checked against 2.1.0 (tests/test_transport.py
passes on both; their ``Client`` differs here only in how its own ``_handle_publish`` and
``_handle_pubackcomp`` decode, which the fast paths fall back to). pyproject.toml pins
``paho-mqtt>=2.1,<2.3`` for that reason: a later paho may rename what this module relies on.
At import the private names are checked (``_check_paho``); a paho without them fails here, with
the list of what is missing, instead of in the middle of a connection.

Facts this module is built on (docs/broker-facts.md and paho's source):
- paho reads every packet with at least three ``recv`` calls (command byte, each byte of the
  remaining length, the body); on a plain socket each is a system call. ``BufferedSocket`` serves
  them from a 64 KiB chunk.
- paho wakes its network thread (a byte through a socket pair, then a select()) for every packet
  queued from any thread; ``TunedClient._packet_queue`` skips the wake-ups that are not needed.
- paho's generic PUBLISH path builds a ``PublishPacket``, an ``MQTTMessage`` and a
  ``Properties`` even for a packet without properties: about a fifth of a small message's CPU.
- paho's ``max_inflight_messages`` setter refuses while connected, and the broker's Receive
  Maximum is known only once connected: ``set_send_window`` writes the attribute behind it.
- Nagle's algorithm costs ~40 ms a round trip and paho never sets TCP_NODELAY; its WebSocket
  wrapper keeps the real socket in ``_socket`` (``set_nodelay``).
- paho closes its socket right after writing DISCONNECT. With bytes still unread in the receive
  queue (a coordinator's steady stream of heartbeats and status events) the kernel then resets the
  connection instead of closing it, and Mosquitto, reading the reset before the DISCONNECT behind
  it, publishes the Last Will of a clean stop ("closed its connection" in its log, not
  "disconnected"): 4 of 20 clean closes under a stream of messages. ``_sock_close`` half-closes and
  reads until the broker closes its side, which it does once it has handled the DISCONNECT.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt import __version__ as paho_version
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, _ConnectionState
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)

_CLIENT_METHODS = ("_create_socket", "_sock_close", "_packet_read", "_loop_rc_handle", "_handle_publish",
                   "_send_puback", "_handle_pubackcomp", "_do_on_publish", "_packet_queue", "_easy_log")
_CLIENT_ATTRIBUTES = ("_out_packet", "_sock", "_state", "_in_packet", "_protocol", "_in_callback_mutex", "_manual_ack",
                      "_out_message_mutex", "_out_messages", "_thread", "_sockpairW", "_max_inflight_messages",
                      "suppress_exceptions")
CHECKED_VERSIONS = "2.1.0 and 2.2.0"


def _check_paho() -> None:
    """Fail at import, naming what is missing, if this paho lacks a private name used below."""
    bare = paho.Client(CallbackAPIVersion.VERSION2)  # no socket is made before connect()
    missing = [name for name in _CLIENT_METHODS if not callable(getattr(paho.Client, name, None))]
    missing += [name for name in _CLIENT_ATTRIBUTES if not hasattr(bare, name)]
    if missing:
        raise ImportError(f"mqtt_tasks.transport needs paho-mqtt's private {', '.join(missing)}, missing from "
                          f"paho-mqtt {paho_version} (checked against {CHECKED_VERSIONS}): "
                          "install paho-mqtt>=2.1,<2.3")


_check_paho()

_PUBACK = 0x40
_PUBACK_PACKET = struct.Struct("!BBH")
_PUBACK_SUCCESS = ReasonCode(PacketTypes.PUBACK)  # what paho passes for a 2-byte PUBACK, made once
_PUBACK_NO_PROPERTIES = Properties(PacketTypes.PUBACK)

# -- reading many packets per wake-up -------------------------------------------------------------
READ_CHUNK = 65536
DISCONNECT_DRAIN_S = 1.0
"""After a DISCONNECT, how long ``_sock_close`` waits at most for the broker to close its side."""
READ_BUDGET = 256
"""Packets one ``loop_read`` handles at most before paho's loop gets to write (acks) again."""


class BufferedSocket:
    """A plain TCP socket read in 64 KiB chunks, served to paho in the small pieces it asks for.

    paho reads every packet with at least three ``recv`` calls (the command byte, each byte of
    the remaining length, then the body), each a system call on a plain socket. Here a chunk
    holding many packets costs one; ``pending()`` tells paho's loop, as it does for TLS sockets,
    that bytes are buffered and select() must not wait for the socket.
    """

    __slots__ = ("_sock", "_buf", "_pos")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, size: int) -> bytes:
        if self._pos < len(self._buf):
            chunk = self._buf[self._pos:self._pos + size]
            self._pos += len(chunk)
            return chunk
        data = self._sock.recv(READ_CHUNK)  # BlockingIOError when nothing is there, as before
        if len(data) <= size:
            return data
        self._buf, self._pos = data, size
        return data[:size]

    def pending(self) -> int:
        return len(self._buf) - self._pos

    def __getattr__(self, name: str) -> Any:  # send, fileno, close, setsockopt, ...: the socket's own
        return getattr(self._sock, name)


class TunedClient(paho.Client):
    """paho's client with fewer system calls and thread wake-ups per message.

    - Reads: with ``buffered_reads``, plain TCP is read through ``BufferedSocket``, and every
      packet that arrived together is handled in one pass (paho's ``loop_read`` handles one per
      select() unless it has messages of its own in flight).
    - Writes: paho wakes its network thread (one byte through a socket pair, then a select())
      for every packet queued from any thread. Here a packet queued behind others that are not
      yet written needs no wake-up of its own (the network thread writes its queue until it is
      empty), a packet the network thread queues itself is written by it without one, and
      ``held_writes()`` lets one thread queue several packets behind a single wake-up.
    - Incoming QoS 0 and 1 PUBLISH packets, with ``on_publish_received`` set, are decoded here and
      handed to it as plain values: paho's generic path builds a ``PublishPacket``, an
      ``MQTTMessage``, a ``Properties`` object even when the packet has none, formats struct
      strings and matches the topic against per-topic callbacks, about a fifth of the CPU a
      small message costs. QoS 2, MQTT 5 topic aliases (an empty topic) and malformed packets
      take paho's own path, which handles or rejects them as before.
    - A PUBACK of success without properties (2 bytes: every PUBACK of a 3.1.1 broker, and of an
      MQTT 5 one that accepted the message) skips paho's decoding into fresh ``ReasonCode`` and
      ``Properties`` objects; what follows (``on_publish``, the in-flight window) is paho's.
    """

    on_publish_received: Callable[[str, bytes, int, bool, int, Properties | None], None] | None = None

    def __init__(self, *args: Any, buffered_reads: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._buffered_reads = buffered_reads
        self._holding = threading.local()

    # -- what paho has no public way to do -------------------------------------------------------
    def name_thread(self, name: str) -> None:
        """Give the network thread started by ``loop_start`` a name that says whose it is."""
        thread = self._thread
        if thread is not None:
            thread.name = name

    def set_send_window(self, window: int) -> None:
        """QoS 1 publishes unacknowledged at once; paho's setter refuses while connected."""
        self._max_inflight_messages = window

    def set_nodelay(self) -> None:
        """TCP_NODELAY on the connected socket (again after every reconnect): Nagle costs ~40 ms."""
        sock: Any = self.socket()
        try:
            raw = getattr(sock, "_socket", sock)  # the WebSocket wrapper keeps the socket inside
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError) as exc:
            log.debug("TCP_NODELAY not set: %s", exc)

    def ack_qos1_batch(self, mids: list[int]) -> None:
        """PUBACK each mid; two or more go as one buffer of packets, one queue entry, one wake-up
        (3.1.1 and 5 alike: a 2-byte remaining length means reason Success)."""
        if len(mids) < 2:  # nothing to gain
            for mid in mids:
                self.ack(mid, 1)
            return
        self._packet_queue(_PUBACK, b"".join(_PUBACK_PACKET.pack(_PUBACK, 2, mid) for mid in mids), 0, 0)

    def _sock_close(self) -> None:
        """After our DISCONNECT, close without a reset: see the module docstring."""
        sock = self._sock
        # paho's WebSocket wrapper has no shutdown(): its own close stays as paho made it
        if sock is not None and self._state == _ConnectionState.MQTT_CS_DISCONNECTING and hasattr(sock, "shutdown"):
            drain_until_closed(sock, DISCONNECT_DRAIN_S)
        super()._sock_close()

    # -- reads ------------------------------------------------------------------------------------
    def _create_socket(self) -> Any:
        sock = super()._create_socket()
        return BufferedSocket(sock) if self._buffered_reads and type(sock) is socket.socket else sock

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = self._read_buffered() if self._buffered_reads else super().loop_read(max_packets)
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._out_packet and self._sock is not None:
            return self.loop_write()  # acks and released publishes, without another select()
        return rc

    def _read_buffered(self) -> MQTTErrorCode:
        for _ in range(READ_BUDGET):
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                break
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_publish(self) -> MQTTErrorCode:
        handler = self.on_publish_received
        if handler is None:
            return super()._handle_publish()
        decoded = decode_publish(self._in_packet["command"], self._in_packet["packet"], self._protocol == paho.MQTTv5)
        if decoded is None:  # QoS 2, an empty topic (an alias, or malformed), bad UTF-8, truncated
            return super()._handle_publish()
        with self._in_callback_mutex:
            try:
                handler(*decoded)
            except Exception as err:
                self._easy_log(paho.MQTT_LOG_ERR, "Caught exception in on_publish_received: %s", err)
                if not self.suppress_exceptions:
                    raise
        if decoded[2] == 1 and not self._manual_ack:
            return self._send_puback(decoded[4])
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_pubackcomp(self, cmd: Any) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        if cmd != "PUBACK" or len(packet) != 2:
            return super()._handle_pubackcomp(cmd)
        mid = (packet[0] << 8) | packet[1]
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, _PUBACK_SUCCESS, _PUBACK_NO_PROPERTIES)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    # -- writes -----------------------------------------------------------------------------------
    def _packet_queue(self, command: int, packet: bytes | bytearray, mid: int, qos: int,
                      info: paho.MQTTMessageInfo | None = None) -> MQTTErrorCode:
        thread = self._thread
        if thread is None or self._sockpairW is None:  # no network thread: paho writes at once
            return super()._packet_queue(command, packet, mid, qos, info)
        out = self._out_packet
        out.append({"command": command, "mid": mid, "qos": qos, "pos": 0, "to_process": len(packet),
                    "packet": packet, "info": info})
        # len > 1: a packet ahead of this one is unwritten, and the network thread writes the
        # queue until it is empty (or, if the socket is full, selects for writing while any is left).
        if len(out) == 1 and threading.get_ident() != thread.ident and not getattr(self._holding, "on", False):
            self._wake()
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _wake(self) -> None:
        pair = self._sockpairW  # None once the client is closed
        if pair is not None:
            with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed
                pair.send(b"0")

    @contextlib.contextmanager
    def held_writes(self) -> Iterator[None]:
        """Packets this thread queues inside the block cost the network thread one wake-up."""
        if getattr(self._holding, "on", False):
            yield
            return
        self._holding.on = True
        try:
            yield
        finally:
            self._holding.on = False
            if self._out_packet and self._thread is not None and threading.get_ident() != self._thread.ident:
                self._wake()


def drain_until_closed(sock: Any, timeout: float) -> None:
    """Half-close ``sock`` (a FIN behind what was sent) and read and drop what arrives until the peer
    closes its side or ``timeout`` passes, so that closing it then does not reset the connection."""
    deadline = time.monotonic() + timeout
    try:
        sock.shutdown(socket.SHUT_WR)
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([sock], [], [], left)[0]:
                return
            try:
                if not sock.recv(READ_CHUNK):
                    return  # the broker closed: it read everything before our FIN
            except (BlockingIOError, InterruptedError):
                continue
    except (OSError, ValueError) as exc:  # already reset or closed: nothing left to save
        log.debug("closing after DISCONNECT: %s", exc)


def decode_publish(command: int, packet: bytearray,
                   mqtt5: bool) -> tuple[str, bytes, int, bool, int, Properties | None] | None:
    """A QoS 0/1 PUBLISH as (topic, payload, qos, retain, mid, properties or None); None for
    anything paho's own decoding must handle or reject."""
    qos = (command & 0x06) >> 1
    if qos == 2 or len(packet) < 2:
        return None
    pos = 2 + ((packet[0] << 8) | packet[1])
    if pos == 2 or len(packet) < pos + 2 * (qos == 1) + mqtt5:
        return None
    try:
        topic = packet[2:pos].decode("utf-8")
    except UnicodeDecodeError:
        return None
    mid = 0
    if qos:
        mid = (packet[pos] << 8) | packet[pos + 1]
        pos += 2
    props = None
    if mqtt5:
        if packet[pos] == 0:  # no properties: the usual case
            pos += 1
        else:
            props = Properties(PacketTypes.PUBLISH)
            try:
                _, length = props.unpack(packet[pos:])
            except Exception:  # noqa: BLE001 - malformed: paho's path rejects it its own way
                return None
            pos += length
    return topic, bytes(memoryview(packet)[pos:]), qos, bool(command & 0x01), mid, props
