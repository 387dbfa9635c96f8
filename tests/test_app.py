"""The library from a producer's point of view: submit, wait (sync and asyncio), errors, options."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from mqtt_tasks import (
    PayloadTooLargeError,
    ResultTimeoutError,
    TaskExpiredError,
    TaskFailedError,
    TaskHandle,
    TaskOptions,
)
from tests.tasks_fixture import DEADLINE, Harness


@pytest.fixture
def h(broker_url: str, prefix: str) -> Iterator[Harness]:
    with Harness(broker_url, prefix) as harness:
        yield harness


def test_round_trip_sync(h: Harness) -> None:
    h.worker(concurrency=2)
    add = h.app.registry["add"]
    handle = add.submit(2, 3)
    assert isinstance(handle, TaskHandle)
    assert handle.result(timeout=DEADLINE) == 5
    assert handle.done()
    assert h.app.submit("add", 10, 20).result(timeout=DEADLINE) == 30


def test_kwargs_and_per_submission_options(h: Harness) -> None:
    h.worker(concurrency=2)
    scale = h.app.registry["scale"]
    assert scale.submit(2, factor=10, offset=1).result(timeout=DEADLINE) == 21
    handle = scale.submit_with([3], {"factor": 2}, task_id="my-id.1")
    assert handle.id == "my-id.1"
    assert handle.result(timeout=DEADLINE) == 6


def test_name_and_queue_options(h: Harness) -> None:
    """`name=` registers under that name, `queue=` publishes on that queue; the worker takes
    every queue of the app by default."""
    worker = h.worker(concurrency=2)
    assert sorted(worker.queues) == ["default", "math"]
    mul = h.app.registry["math.mul"]
    assert mul.name == "math.mul" and mul.options.queue == "math"
    listener = h.listener(h.topics.tasks("math"))
    handle = mul.submit(6, 7)
    assert handle.result(timeout=DEADLINE) == 42
    sent = listener.wait_json(h.topics.tasks("math"))
    assert (sent["id"], sent["task"], sent["args"]) == (handle.id, "math.mul", [6, 7])


def test_async_await_does_not_block_the_loop(h: Harness) -> None:
    h.worker(concurrency=2)
    add, hold = h.app.registry["add"], h.app.registry["hold"]

    async def main() -> tuple[int, int, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        tick_task = asyncio.create_task(ticker())
        held = hold.submit("async-held")
        waiter = asyncio.ensure_future(held.wait(timeout=DEADLINE))
        # the task is running and the result is being awaited: the loop must keep turning
        await asyncio.get_running_loop().run_in_executor(None, h.probe.wait_started, "async-held")
        before = ticks
        while ticks < before + 5:
            await asyncio.sleep(0.005)
        assert not waiter.done()
        h.probe.gate.set()
        assert await waiter == "async-held"
        first = await add.submit(1, 2)
        results = await asyncio.gather(*(add.submit(i, i).wait(DEADLINE) for i in range(20)))
        tick_task.cancel()
        return first, sum(results), ticks

    first, total, ticks = asyncio.run(main())
    assert first == 3
    assert total == sum(2 * i for i in range(20))
    assert ticks >= 5


def test_async_wait_timeout_leaves_the_handle_usable(h: Harness) -> None:
    """`await h.wait(timeout)` raises ResultTimeoutError; the result arriving later still resolves
    the handle (a timed-out wait must not cancel it)."""
    h.worker(concurrency=1)
    handle = h.app.registry["hold"].submit("late")

    async def main() -> None:
        with pytest.raises(ResultTimeoutError) as info:
            await handle.wait(timeout=0.2)
        assert info.value.task_id == handle.id

    asyncio.run(main())
    with pytest.raises(TimeoutError):  # ResultTimeoutError is also a builtin TimeoutError
        handle.result(timeout=0.01)
    h.probe.gate.set()
    assert handle.result(timeout=DEADLINE) == "late"

    async def again() -> str:
        return await handle  # type: ignore[no-any-return]

    assert asyncio.run(again()) == "late"


def test_many_tasks_from_one_producer(h: Harness, broker_kind: str) -> None:
    """2,000 submits return at once (no round trip each); every result comes back correct."""
    h.worker(concurrency=8)
    add = h.app.registry["add"]
    h.app.connect()
    started = time.monotonic()
    handles = [add.submit(i, 1) for i in range(2000)]
    submit_s = time.monotonic() - started
    assert submit_s < 5, f"submitting 2,000 tasks took {submit_s:.1f}s"
    results = [handle.result(timeout=60) for handle in handles]
    assert results == [i + 1 for i in range(2000)]
    assert len({handle.id for handle in handles}) == 2000


def test_remote_exception_carries_type_and_message(h: Harness) -> None:
    h.worker(concurrency=1)
    handle = h.app.registry["boom"].submit("kaput")
    with pytest.raises(TaskFailedError) as info:
        handle.result(timeout=DEADLINE)
    err = info.value
    assert (err.task_id, err.error_type, err.error_message) == (handle.id, "ValueError", "kaput")
    assert err.remote_traceback and "raise ValueError(message)" in err.remote_traceback
    assert err.status["state"] == "failed" and err.status["final"] is True


def test_unknown_task_fails_with_unknown_task_error(h: Harness) -> None:
    h.worker(concurrency=1)
    listener = h.listener(h.topics.all_status)
    handle = h.app.submit("no.such.task", 1)
    with pytest.raises(TaskFailedError) as info:
        handle.result(timeout=DEADLINE)
    assert info.value.error_type == "UnknownTaskError"
    assert "no.such.task" in info.value.error_message
    event = listener.wait_json(h.topics.status(handle.id), lambda e: e["state"] == "failed")
    assert event["error"]["type"] == "UnknownTaskError" and event["final"] is True


def test_expired_task_ends_expired(h: Harness) -> None:
    """A task whose `expires_at` has passed when a worker takes it is never run."""
    h.worker(concurrency=1)
    listener = h.listener(h.topics.all_status)
    handle = h.app.send("add", (1, 2), extra={"expires_at": time.time() - 1})
    with pytest.raises(TaskExpiredError):
        handle.result(timeout=DEADLINE)
    event = listener.wait_json(h.topics.status(handle.id))
    assert event["state"] == "expired" and event["final"] is True
    assert not [m for m in listener.on(h.topics.status(handle.id)) if m.json()["state"] == "started"]


def test_unserialisable_result_fails_clearly(h: Harness) -> None:
    h.worker(concurrency=1)
    handle = h.app.registry["unserialisable"].submit()
    with pytest.raises(TaskFailedError) as info:
        handle.result(timeout=DEADLINE)
    assert info.value.error_type == "TypeError"
    assert "not JSON-serialisable" in info.value.error_message
    # the worker keeps working
    assert h.app.registry["add"].submit(1, 1).result(timeout=DEADLINE) == 2


def test_oversize_payload_is_refused_before_publishing(h: Harness) -> None:
    listener = h.listener(h.topics.all_tasks)
    limit = h.app.settings.max_payload
    with pytest.raises(PayloadTooLargeError) as info:
        h.app.registry["add"].submit("x" * limit, "y")
    assert info.value.limit == limit and info.value.size > limit
    assert not h.app._pending, "a refused task leaves no waiter behind"
    small = h.app.registry["add"].submit(1, 2)
    listener.wait_json(h.topics.tasks("default"), lambda t: t["id"] == small.id)
    assert len(listener.on(h.topics.tasks("default"))) == 1, "the oversize task never reached the broker"


def test_a_producer_keeps_nothing_for_handles_it_dropped(h: Harness) -> None:
    """No worker serves this queue, so no result ever comes: a producer that sends and forgets
    must not keep a future per task for ever (it did: memory grew with every task sent)."""
    import gc

    kept = [h.app.send("add", (1, 2), options=TaskOptions(queue="nobody")) for _ in range(3)]
    for _ in range(500):
        h.app.send("add", (1, 2), options=TaskOptions(queue="nobody"))
    assert h.app.flush(DEADLINE)
    gc.collect()
    assert h.app.awaiting == len(kept)  # the three handles still held wait on; the 500 cost nothing
    del kept
    gc.collect()
    assert h.app.awaiting == 0


def test_a_kept_handle_still_gets_its_result_after_others_were_dropped(h: Harness) -> None:
    import gc

    h.worker(concurrency=2)
    add = h.app.registry["add"]
    for _ in range(20):
        add.submit(1, 1)  # dropped at once
    handle = add.submit(2, 3)
    gc.collect()
    assert handle.result(timeout=DEADLINE) == 5
