"""Round trips of one fenced commit on PostgreSQL, counted from libpq's protocol trace
(bench/pgcommit.py): what docs/coordinator.md and docs/benchmarks.md say a commit costs.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.pgcommit import measure, round_trips
from mqtt_tasks.store.postgres import COPY_MIN, PostgresStore


@pytest.fixture
def store() -> Iterator[PostgresStore]:
    from tests.postgres import private_database

    with private_database() as url:
        store = PostgresStore(url)
        yield store
        store.close()


def test_the_trace_counts_each_turn_from_client_to_server() -> None:
    trace = "\n".join(["t\tF\t5\tQuery", "t\tF\t4\tSync", "t\tB\t5\tReadyForQuery", "t\tB\t4\tX",
                       "t\tF\t4\tQuery", "t\tB\t5\tReadyForQuery", "noise without a side"])
    assert round_trips(trace) == 2
    assert round_trips("") == 0


def test_a_small_commit_is_three_round_trips_and_a_large_one_six(store: PostgresStore) -> None:
    # prefetch; BEGIN + the lease's renewal + the rows in one pipeline; COMMIT
    assert measure(store, 1, 2, "small")["round_trips"] == 3
    # prefetch; BEGIN; COPY (its start, then its data); the pipeline; COMMIT
    assert measure(store, COPY_MIN, 2, "large")["round_trips"] == 6
    assert store.counts() == {"succeeded": 2 * (1 + COPY_MIN) + 1 + COPY_MIN}
