"""The running task's context: ``current_task()`` inside a task body, in a thread or a coroutine.

::

    from mqtt_tasks import current_task

    @app.task
    def resize(paths):
        task = current_task()            # None outside a task body
        for i, path in enumerate(paths):
            ...
            task.progress((i + 1) / len(paths), f"resized {path}")

Built on these facts:

- ``contextvars`` is what both worlds share: the worker sets the variable in the pool thread
  before calling a plain function (and resets it after: pool threads are reused), and inside the
  asyncio task of an ``async def`` one (each asyncio task runs in its own copy of the context).
  So ``current_task()`` is right in both, and in code the body calls; a thread the body starts
  itself does not inherit it (pass the context on, or use ``contextvars.copy_context``).
- The context is one small object built when the task starts; a body that never reads it costs
  the worker that object and one ``ContextVar.set``.
- ``progress`` only hands the report to the worker, which rate-limits what goes on the wire
  (worker/progress.py): call it as often as you like.
"""

from __future__ import annotations

import math
from contextvars import ContextVar
from typing import Protocol

MAX_PROGRESS_MESSAGE = 1024
"""Characters of a progress message kept; longer ones are cut."""


class ProgressSink(Protocol):
    def __call__(self, context: TaskContext, fraction: float | None, message: str | None) -> None: ...


class TaskContext:
    """What a running task can know about itself, and its way to report progress.

    ``id``, ``name`` (the registered task name), ``attempt``, ``queue``, ``worker`` (the worker
    id), ``cancelled`` (a cancel request reached this attempt: a body blocked where the raised
    ``TaskCancelled`` cannot reach it may poll this).
    """

    __slots__ = ("id", "name", "attempt", "queue", "worker", "cancelled", "_sink")

    def __init__(self, task_id: str, name: str, attempt: int, queue: str, worker: str,
                 sink: ProgressSink | None = None) -> None:
        self.id = task_id
        self.name = name
        self.attempt = attempt
        self.queue = queue
        self.worker = worker
        self.cancelled = False
        self._sink = sink

    def __repr__(self) -> str:
        return f"<TaskContext {self.name}[{self.id}] attempt {self.attempt} on {self.worker}>"

    def progress(self, fraction: float | None = None, message: str | None = None) -> None:
        """Report progress: ``fraction`` done in [0, 1] and/or a ``message``. Published as a
        ``progress`` status event, at most one per the worker's ``progress_every`` (the latest
        one wins); renews the task's lease and its step timer (``step_timeout``)."""
        if fraction is not None:
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not math.isfinite(fraction) \
                    or not 0.0 <= fraction <= 1.0:
                raise ValueError(f"progress fraction must be a number in [0, 1], not {fraction!r}")
            fraction = float(fraction)
        if message is not None:
            message = str(message)[:MAX_PROGRESS_MESSAGE]
        if self._sink is not None:
            self._sink(self, fraction, message)


CURRENT: ContextVar[TaskContext | None] = ContextVar("mqtt_tasks_current_task", default=None)


def current_task() -> TaskContext | None:
    """The context of the task body this code runs in, or None outside one."""
    return CURRENT.get()
