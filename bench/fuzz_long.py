"""The long fuzz run: 100,000 hypothesis inputs through each receive path of tests/test_fuzz.py.

    python bench/fuzz_long.py [--examples 100000]

The same properties as the CI-sized tests (decoder, worker dispatcher, coordinator), only more
inputs; prints one line per property and exits non-zero on the first falsifying input. The
result of the last run is recorded in docs/security.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402

from tests import test_fuzz as fz  # noqa: E402


def run(name: str, examples: int, prop: Any) -> None:
    counter = {"n": 0}

    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate, Phase.shrink],
              suppress_health_check=list(HealthCheck))
    @given(fz.any_payload())
    def body(payload: bytes) -> None:
        counter["n"] += 1
        prop(payload)

    start = time.monotonic()
    body()
    print(f"{name}: {counter['n']} inputs, no failure, {time.monotonic() - start:.0f} s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--only", choices=["decoder", "worker", "coordinator"], action="append",
                        help="run only these properties (repeatable); default all three")
    args = parser.parse_args()
    only = set(args.only or ["decoder", "worker", "coordinator"])
    crashes: list[str] = []
    threading.excepthook = lambda a: crashes.append(f"{a.thread.name if a.thread else '?'}: {a.exc_value!r}")
    logging.disable(logging.CRITICAL)  # every rejected input logs a warning; the counts are the result
    harness = fz.Harness()
    coordinator = fz.CoordinatorHarness()
    try:
        props = {
            "decoder": fz.test_decoders_raise_only_decode_error.hypothesis.inner_test,
            "worker": lambda p: fz.test_worker_receive_path_one_outcome_per_input.hypothesis.inner_test(harness, p),
            "coordinator": lambda p: fz.test_coordinator_receive_path_one_report_per_rejected_input.hypothesis
            .inner_test(coordinator, p),
        }
        for name, prop in props.items():
            if name in only:
                run(name, args.examples, prop)
                if crashes:  # a background thread died: as much a failure as an assertion
                    print(f"{name}: thread crashed: {crashes}", flush=True)
                    return 1
    finally:
        harness.close()
        coordinator.coordinator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
