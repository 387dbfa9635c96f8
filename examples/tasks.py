"""Example tasks: run a worker for them with ``mqtt-worker examples.tasks:app`` from the repo root.

The broker comes from ``$MQTT_TASKS_BROKER`` (default mqtt://127.0.0.1:1883) unless the worker
is given ``--broker``.
"""

from __future__ import annotations

import asyncio
import time

from mqtt_tasks import TaskApp

app = TaskApp()


@app.task
def add(a: float, b: float) -> float:
    """The classic: ``mqtt-tasks submit add 2 3 --wait`` prints 5."""
    return a + b


@app.task(name="text.shout")
def shout(text: str, times: int = 1) -> str:
    """A task registered under a name of its own."""
    return " ".join([text.upper()] * times)


@app.task
def slow(seconds: float, value: object = None) -> object:
    """Sleeps, then returns ``value``: try stopping the worker while it runs (it finishes first)."""
    time.sleep(seconds)
    return value


@app.task(timeout=60)
async def fetch_later(delay: float, what: str) -> dict[str, object]:
    """An ``async def`` task: runs on the worker's event loop, next to other async tasks."""
    await asyncio.sleep(delay)
    return {"what": what, "delay": delay}


@app.task
def divide(a: float, b: float) -> float:
    """Fails with ZeroDivisionError for b=0: the error comes back to the producer."""
    return a / b


@app.task(rate_limit="2/s", rate_key="device")
def notify(device: str, text: str) -> str:
    """At most 2 a second *per device*, across every worker: the coordinator keeps the limit
    (``mqtt-tasks coordinator``); with no coordinator online the task is refused, never run unlimited."""
    return f"{device}: {text}"
