"""The demo's tasks: quick computations for the fast phase, slow calls for the recovery phase.

Fast tasks compute something small and real (a sum, a SHA-256 chain, a prime count); none of
them sleeps, so the fast phase measures the system, not a timer. Every ``fail_every``-th fast
task divides by zero with ``max_attempts=1``: a failure reported as such, never a lost task.

``slow_call`` stands in for a call to a slow service (an HTTP API, a database): it waits without
using a CPU, which lets a 2-core machine hold a few dozen of them in flight.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Any

from ..app import TaskApp, TaskOptions
from ..config import Settings

Plan = list[tuple[str, list[Any]]]

ON_PURPOSE = TaskOptions(max_attempts=1)  # a division by zero fails the same way every time
SLOW_CALL_MS = (1200, 2000)  # the range of a slow call's duration


def build_demo_app(settings: Settings) -> TaskApp:
    app = TaskApp(settings=settings, client_id=f"demo-producer-{uuid.uuid4().hex[:6]}")

    @app.task
    def add(a: float, b: float) -> float:
        return a + b

    @app.task
    def checksum(text: str, rounds: int = 100) -> str:
        digest = text.encode()
        for _ in range(rounds):
            digest = hashlib.sha256(digest).digest()
        return digest.hex()[:16]

    @app.task
    def primes(below: int) -> int:
        sieve = bytearray([1]) * max(below, 2)
        sieve[0:2] = b"\x00\x00"
        for n in range(2, int(below ** 0.5) + 1):
            if sieve[n]:
                sieve[n * n::n] = bytes(len(range(n * n, below, n)))
        return sum(sieve)

    @app.task
    def divide(a: float, b: float) -> float:
        return a / b  # the demo sends b=0 now and then: failures are reported, not lost

    @app.task
    async def slow_call(ms: int, key: str) -> str:
        await asyncio.sleep(ms / 1000)  # the remote service taking its time
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    return app


def fast_plan(count: int, fail_every: int) -> Plan:
    """A deterministic mix of quick tasks; every ``fail_every``-th one divides by zero."""
    plan: Plan = []
    for i in range(count):
        if fail_every and i % fail_every == fail_every - 1:
            plan.append(("divide", [i, 0]))
        else:
            mix: Plan = [("add", [i, i]), ("checksum", [f"task-{i}"]), ("primes", [500 + i % 500]),
                         ("divide", [i, 2])]
            plan.append(mix[i % 4])
    return plan


def slow_plan(count: int) -> Plan:
    """``count`` slow calls of 1.2 to 2 seconds."""
    low, high = SLOW_CALL_MS
    return [("slow_call", [low + (i * 137) % (high - low), f"call-{i}"]) for i in range(count)]


def on_purpose(name: str, args: list[Any]) -> bool:
    """True for the tasks that fail by design (a division by zero)."""
    return name == "divide" and len(args) == 2 and args[1] == 0
