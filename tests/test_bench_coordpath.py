"""bench/coordpath.py measures the coordinator's real per-task path: every message it feeds is
decided, committed and acknowledged (docs/benchmarks.md quotes its figures)."""

from __future__ import annotations

import pytest

from bench import coordpath


@pytest.mark.parametrize("spread", [2, 3])
def test_every_task_is_decided_committed_and_acknowledged(spread: int) -> None:
    batches = coordpath.messages(250, spread)
    assert sum(len(b) for b in batches) == 3 * 250 and len(batches) == 3 + spread - 1  # 100 tasks a group
    figures = coordpath.one_round(250, spread)  # raises unless 250 succeeded and 750 acks
    assert figures["cpu_us"] > 0 and figures["published"] > 0  # receipts, one per batch of tasks

