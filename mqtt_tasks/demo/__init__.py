"""``mqtt-tasks demo``: what the system does, shown in two phases on one machine.

1. Fast (``fast``): a burst of quick tasks through the embedded broker, then a few one at a
   time; throughput and latency measured end to end, from publish to final status event.
2. Recovery (``recovery``): slow calls spread over worker processes; one is killed with SIGKILL
   mid-run and the screen follows the coordinator as it notices and dispatches the tasks again.

Then the fleet: tasks run per worker, and the coordinator apart, as the record keeper (it runs
no tasks). Every figure comes from the status, worker and inbox topics (``watch``) and is
cross-checked against what was submitted and against the coordinator's record (``run``).

Modules: ``tasks`` (the example tasks), ``fleet`` (broker and worker processes), ``watch``,
``rig`` (what the phases share), ``fast``, ``recovery``, ``run`` (``run_demo``), ``screen``
(rich; the ``demo`` extra). ``python -m mqtt_tasks.demo`` is the entry point of the children.

    result = run_demo(workers=3, tasks=2000)      # an embedded broker in a child process
    assert not result.problems()
"""

from .fast import FastResult
from .recovery import RecoveryResult
from .rig import Screen, percentile
from .run import CoordinatorRecord, DemoResult, run_demo
from .tasks import build_demo_app, fast_plan, slow_plan

__all__ = [
    "CoordinatorRecord",
    "DemoResult",
    "FastResult",
    "RecoveryResult",
    "Screen",
    "build_demo_app",
    "fast_plan",
    "percentile",
    "run_demo",
    "slow_plan",
]
