"""Simulated workers, thousands per process: ``python -m bench.fleetsim --count N ...``.

Each one is a real MQTT 3.1.1 connection speaking the worker's wire protocol (docs/design.md, "Wire
contract"), written on raw asyncio streams so that one process holds thousands of them (a paho
client costs a thread with ``loop_start`` and three file descriptors):

- a Last Will ``offline`` and a retained heartbeat ``online`` on ``P/workers/{id}`` at connect,
  then every ``--heartbeat`` seconds (a device-like 30 s by default, each worker at its own phase),
  with ``queues``, ``concurrency``, ``free`` and ``heartbeat_s`` as a real worker sends them;
- a member of the shared subscription ``$share/{group}/P/tasks/{queue}`` and of its inbox
  ``P/inbox/{id}``: a task is answered at once with ``succeeded`` on ``P/status/{id}`` (and its
  ``reply_to``), then acknowledged;
- PINGREQ within its keep-alive.

Prints ``READY {"connected": n}`` once every connection has its CONNACK and SUBACK; runs until
SIGTERM, or until its parent dies (``--parent-pid``). Raises its own open-file limit to the hard
limit first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import struct
import time
from typing import Any

from mqtt_tasks.worker.lifecycle import DEFAULT_GROUP


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def connect_packet(client_id: str, will_topic: str, will: bytes, keepalive: int) -> bytes:
    flags = 0x02 | 0x04 | 0x08 | 0x20  # clean session, will, will QoS 1, will retained
    return _packet(0x10, _str("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive)
                   + _str(client_id) + _str(will_topic) + _str(will))


def publish_packet(topic: str, payload: bytes, mid: int, retain: bool = False) -> bytes:
    return _packet(0x32 | (0x01 if retain else 0), _str(topic) + struct.pack("!H", mid) + payload)


def subscribe_packet(mid: int, filters: list[str]) -> bytes:
    return _packet(0x82, struct.pack("!H", mid) + b"".join(_str(f) + b"\x01" for f in filters))


class SimWorker:
    """One simulated worker on one connection."""

    def __init__(self, wid: str, args: argparse.Namespace, counters: dict[str, int]) -> None:
        self.wid = wid
        self.args = args
        self.counters = counters
        self.ready = asyncio.Event()
        self._mid = 0
        self._writer: asyncio.StreamWriter | None = None

    def _next_mid(self) -> int:
        self._mid = self._mid % 65535 + 1
        return self._mid

    def state(self, name: str = "online") -> bytes:
        a = self.args
        return json.dumps({"worker": self.wid, "state": name, "queues": [a.queue], "concurrency": a.concurrency,
                           "tasks": [], "ts": time.time(), "heartbeat_s": a.heartbeat, "free": a.concurrency,
                           "waiting": 0, "group": a.group}, separators=(",", ":")).encode()

    async def run(self, host: str, port: int) -> None:
        a = self.args
        reader, writer = await asyncio.open_connection(host, port)
        self._writer = writer
        will = json.dumps({"worker": self.wid, "state": "offline", "ts": time.time()}).encode()
        writer.write(connect_packet(self.wid, f"{a.prefix}/workers/{self.wid}", will, a.keepalive))
        writer.write(subscribe_packet(self._next_mid(), [f"$share/{a.group}/{a.prefix}/tasks/{a.queue}",
                                                         f"{a.prefix}/inbox/{self.wid}"]))
        self.heartbeat()
        await asyncio.gather(self._read(reader), self._beat())

    def heartbeat(self) -> None:
        assert self._writer is not None
        self._writer.write(publish_packet(f"{self.args.prefix}/workers/{self.wid}", self.state(), self._next_mid(),
                                          retain=True))
        self.counters["heartbeats"] += 1

    async def _beat(self) -> None:
        a = self.args
        await asyncio.sleep(random.uniform(0, a.heartbeat))  # each worker at its own phase
        last_ping = time.monotonic()
        while True:
            self.heartbeat()
            if time.monotonic() - last_ping > a.keepalive / 2:
                assert self._writer is not None
                self._writer.write(b"\xc0\x00")
                last_ping = time.monotonic()
            await asyncio.sleep(a.heartbeat)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while True:
            first = (await reader.readexactly(1))[0]
            length, shift = 0, 0
            while True:
                byte = (await reader.readexactly(1))[0]
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            body = await reader.readexactly(length) if length else b""
            kind = first >> 4
            if kind == 9:  # SUBACK
                self.ready.set()
            elif kind == 3:
                self._on_publish(first, body)

    def _on_publish(self, first: int, body: bytes) -> None:
        assert self._writer is not None
        (tlen,) = struct.unpack_from("!H", body)
        pos = 2 + tlen
        mid = None
        if (first >> 1) & 0x03:
            (mid,) = struct.unpack_from("!H", body, pos)
            pos += 2
        self._answer(body[pos:])
        if mid is not None:
            self._writer.write(b"\x40\x02" + struct.pack("!H", mid))

    def _answer(self, payload: bytes) -> None:
        assert self._writer is not None
        try:
            task: dict[str, Any] = json.loads(payload)
            task_id = str(task["id"])
        except (ValueError, KeyError, TypeError):
            return
        event = json.dumps({"id": task_id, "state": "succeeded", "attempt": task.get("attempt", 1),
                            "worker": self.wid, "ts": time.time(), "result": None}, separators=(",", ":")).encode()
        self._writer.write(publish_packet(f"{self.args.prefix}/status/{task_id}", event, self._next_mid()))
        if task.get("reply_to"):
            self._writer.write(publish_packet(str(task["reply_to"]), event, self._next_mid()))
        self.counters["tasks"] += 1


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


async def main_async(args: argparse.Namespace) -> None:
    host, port = args.broker.split("//")[-1].rsplit(":", 1)
    counters = {"heartbeats": 0, "tasks": 0}
    sims = [SimWorker(f"{args.tag}-{i}", args, counters) for i in range(args.count)]
    tasks = []
    for i in range(0, len(sims), 100):  # in waves: Mosquitto's listen backlog is 100
        chunk = sims[i:i + 100]
        tasks += [asyncio.create_task(s.run(host, int(port))) for s in chunk]
        await asyncio.wait_for(asyncio.gather(*(s.ready.wait() for s in chunk)), 60)
    print("READY", json.dumps({"pid": os.getpid(), "connected": len(sims)}), flush=True)
    parent = args.parent_pid
    while not parent or os.getppid() == parent:
        await asyncio.sleep(1.0)
        if any(t.done() for t in tasks):
            failed = next(t for t in tasks if t.done())
            raise SystemExit(f"fleetsim: a connection ended: {failed.exception()!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fleetsim")
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--prefix", default="bench")
    parser.add_argument("--queue", default="default")
    parser.add_argument("--group", default=DEFAULT_GROUP)
    parser.add_argument("--count", type=int, default=2500)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--heartbeat", type=float, default=30.0)
    parser.add_argument("--keepalive", type=int, default=60)
    parser.add_argument("--tag", default=f"sim{os.getpid()}")
    parser.add_argument("--parent-pid", type=int, default=0)
    args = parser.parse_args(argv)
    raise_nofile()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
