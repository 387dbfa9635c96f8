"""Running task bodies: a bounded thread pool for plain functions, one event loop for
``async def`` ones, and one thread that enforces time limits.

Each run reports exactly once (``on_report``: the outcome, or a time-limit failure at the
deadline) and releases its slot exactly once (``on_release``: when the thread or coroutine is
really free again). A plain function past its deadline gets ``TaskTimeLimitExceeded`` raised
inside it (as Dramatiq does); a call blocked in C code sees it only when it returns, so the
failure is reported at the deadline while the slot stays taken until the thread is free.
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import logging
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .context import CURRENT, TaskContext
from .errors import TaskCancelled, TaskTimeLimitExceeded

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Outcome:
    ok: bool
    value: Any = None
    error_type: str = ""
    error_message: str = ""
    traceback: str | None = None
    cancelled: bool = False

    @classmethod
    def from_exception(cls, exc: BaseException) -> Outcome:
        """Never raises: a failure is reported whatever the exception does when described."""
        return cls(False, None, type(exc).__name__, _describe(exc), _traceback_text(exc),
                   cancelled=isinstance(exc, TaskCancelled))


def _describe(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception as failure:  # noqa: BLE001 - a task's exception whose __str__ raises
        return f"<{type(exc).__name__}: str() failed with {type(failure).__name__}>"


def _traceback_text(exc: BaseException) -> str:
    """The formatted traceback; without 3.11's caret lines when formatting itself fails: it parses
    each line's source, which can raise (CPython 3.11.7 shares the AST constructor's recursion
    depth across threads, python/cpython#106905; an exception whose ``__str__`` raises)."""
    try:
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:  # noqa: BLE001 - the frames are still worth reporting
        frames = "".join(f'  File "{f.filename}", line {f.lineno}, in {f.name}\n    {(f.line or "").strip()}\n'
                         for f in traceback.extract_tb(exc.__traceback__))
        return f"Traceback (most recent call last):\n{frames}{type(exc).__name__}: {_describe(exc)}\n"


class Run:
    """One running task body. ``report`` and ``release`` each take effect once."""

    __slots__ = ("_lock", "_reported", "_released", "_on_report", "_on_release", "thread_id",
                 "future", "cancel_reason")

    def __init__(self, on_report: Callable[[Outcome], None], on_release: Callable[[], None]) -> None:
        self._lock = threading.Lock()
        self._reported = False
        self._released = False
        self._on_report = on_report
        self._on_release = on_release
        self.thread_id: int | None = None
        self.future: Future[Any] | None = None
        self.cancel_reason: str | None = None

    def report(self, outcome: Outcome) -> bool:
        with self._lock:
            if self._reported:
                return False
            self._reported = True
        try:
            self._on_report(outcome)
        except Exception:
            log.exception("reporting a task outcome failed")
        return True

    def claim(self) -> bool:
        """Take the report for the caller, who reports the run's end itself (a cancel); the body's
        own outcome is then dropped. False if the run has reported already."""
        with self._lock:
            if self._reported:
                return False
            self._reported = True
            return True

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._on_release()

    @property
    def reported(self) -> bool:
        return self._reported

    @property
    def released(self) -> bool:
        """True once the body's thread or coroutine is free again (it returned, raised, or was cancelled)."""
        return self._released


def _raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> bool:
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type))
    return bool(done == 1)


class DeadlineWatcher:
    """One thread holding a heap of deadlines; fires each due one once."""

    def __init__(self, name: str) -> None:
        self._heap: list[tuple[float, int, Run, str]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name=f"{name}-deadlines", daemon=True)
        self._thread.start()

    def add(self, run: Run, timeout: float, kind: str = "timeout") -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + timeout, next(self._seq), run, kind))
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                due = self._next_due()
                if due is None:
                    return
            self._fire(*due)

    def _next_due(self) -> tuple[Run, float] | None:
        while not self._stopped:
            now = time.monotonic()
            if self._heap and self._heap[0][0] <= now:
                deadline, _, run, _ = heapq.heappop(self._heap)
                if not run.reported:
                    return run, deadline
                continue
            self._cond.wait(self._heap[0][0] - now if self._heap else None)
        return None

    @staticmethod
    def _fire(run: Run, deadline: float) -> None:
        exc = TaskTimeLimitExceeded("the task ran past its time limit")
        if run.report(Outcome.from_exception(exc)):
            if run.thread_id is not None:
                _raise_in_thread(run.thread_id, TaskTimeLimitExceeded)
            elif run.future is not None:
                run.future.cancel()


UNWIND_S = 2.0
"""Seconds the event loop keeps running at shutdown for coroutines still pending (cancelled ones:
handed back by a stopping worker) to unwind, so that their ``finally`` clauses run."""


def _stop_when_unwound(loop: asyncio.AbstractEventLoop) -> None:
    """In the loop: stop it once every pending coroutine is done (bounded by ``UNWIND_S``)."""
    import asyncio

    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if not pending:
        loop.stop()
        return

    async def settle() -> None:
        await asyncio.wait(pending, timeout=UNWIND_S)
        loop.stop()

    loop.create_task(settle())


class Executor:
    """Bounded execution of task bodies. Callers keep the slot count; this runs what it is given."""

    def __init__(self, concurrency: int, name: str = "mqtt-task") -> None:
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"{name}-thread")
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._loop_lock = threading.Lock()
        self._deadlines: DeadlineWatcher | None = None

    def submit(
        self,
        fn: Callable[..., Any],
        args: list[Any],
        kwargs: dict[str, Any],
        *,
        timeout: float | None,
        is_async: bool,
        on_report: Callable[[Outcome], None],
        on_release: Callable[[], None],
        context: TaskContext | None = None,
    ) -> Run:
        """Run ``fn``; ``context`` is what ``current_task()`` returns inside it."""
        run = Run(on_report, on_release)
        if is_async:
            import asyncio  # loaded with the first async task only (~3.6 MB a sync worker never pays)

            loop = self._event_loop()
            coro = self._run_async(run, fn, args, kwargs, timeout, context)
            run.future = asyncio.run_coroutine_threadsafe(coro, loop)
            run.future.add_done_callback(lambda _f: run.release())  # also when cancelled before it ran
        else:
            if timeout is not None:
                self._watcher().add(run, timeout)
            self._pool.submit(self._run_sync, run, fn, args, kwargs, context)
        return run

    def cancel(self, run: Run, reason: str) -> None:
        """Stop a running body: raise ``TaskCancelled`` in it (thread) or cancel it (coroutine)."""
        run.cancel_reason = reason
        if run.report(Outcome.from_exception(TaskCancelled(reason))):
            if run.thread_id is not None:
                _raise_in_thread(run.thread_id, TaskCancelled)
            elif run.future is not None:
                run.future.cancel()

    @staticmethod
    def interrupt(run: Run, reason: str) -> bool:
        """Stop a running body without reporting for it (the caller reports its end): raise
        ``TaskCancelled`` in its thread, or cancel its coroutine. False if it had reported already."""
        run.cancel_reason = reason
        if not run.claim():
            return False
        if run.thread_id is not None:
            _raise_in_thread(run.thread_id, TaskCancelled)
        elif run.future is not None:
            run.future.cancel()
        return True

    def shutdown(self, wait: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=True)
        if self._deadlines is not None:
            self._deadlines.stop()
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(_stop_when_unwound, loop)

    # -- internals ---------------------------------------------------------------------
    @staticmethod
    def _run_sync(run: Run, fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any],
                  context: TaskContext | None) -> None:
        run.thread_id = threading.get_ident()
        token = CURRENT.set(context) if context is not None else None
        try:
            try:
                if run.reported:  # timed out or cancelled before it could start
                    return
                outcome = Outcome(True, fn(*args, **kwargs))
            finally:
                run.thread_id = None
                if token is not None:
                    CURRENT.reset(token)
        except BaseException as exc:  # noqa: BLE001 - every task failure is reported, none escapes
            outcome = Outcome.from_exception(exc)
        finally:
            run.thread_id = None
        run.report(outcome)
        run.release()

    @staticmethod
    async def _run_async(run: Run, fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any],
                         timeout: float | None, context: TaskContext | None) -> None:
        import asyncio

        if context is not None:
            CURRENT.set(context)  # this asyncio task's own copy of the context
        try:
            value = await asyncio.wait_for(fn(*args, **kwargs), timeout)
            outcome = Outcome(True, value)
        except asyncio.TimeoutError:
            outcome = Outcome.from_exception(TaskTimeLimitExceeded("the task ran past its time limit"))
        except asyncio.CancelledError:
            outcome = Outcome.from_exception(TaskCancelled(run.cancel_reason or "cancelled"))
        except Exception as exc:  # noqa: BLE001 - every task failure is reported
            outcome = Outcome.from_exception(exc)
        run.report(outcome)
        run.release()

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        import asyncio

        with self._loop_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def serve() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    try:
                        loop.run_forever()
                    finally:
                        loop.close()

                self._loop_thread = threading.Thread(target=serve, name=f"{self._name}-loop", daemon=True)
                self._loop_thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def _watcher(self) -> DeadlineWatcher:
        with self._loop_lock:
            if self._deadlines is None:
                self._deadlines = DeadlineWatcher(self._name)
            return self._deadlines
