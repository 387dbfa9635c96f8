"""``python -m bench.experiments``: what would make the mqtt-tasks hot path faster, measured.

Each variant monkeypatches the library *in the bench's processes only* (nothing under
mqtt_tasks/ is changed) and runs the end-to-end no-op workload on Mosquitto, no coordinator,
2 workers, N runs, against the unpatched baseline in the same run. Variants combine with ``+``.

- ``noprops``     producer publishes without MQTT 5 Response Topic / Correlation Data
                  (``reply_to`` and ``id`` in the body already carry both)
- ``started0``    the worker publishes ``started`` at QoS 0 (the heartbeat lists held tasks anyway)
- ``conc2``       worker concurrency 2 instead of 4 x CPUs (fewer threads contending for the GIL)

"""

from __future__ import annotations

import os
import statistics
import sys
from typing import Any

PATCH_ENV = "BENCH_PATCH"


def apply(patches: set[str]) -> None:
    """Called in a worker or producer process before it connects."""
    from mqtt_tasks import transport

    original = transport.Connection.publish

    if "noprops" in patches:
        def publish_noprops(self: Any, topic: str, payload: bytes, **kw: Any) -> int:
            kw.pop("response_topic", None)
            kw.pop("correlation_data", None)
            return original(self, topic, payload, **kw)
        transport.Connection.publish = publish_noprops  # type: ignore[method-assign]

    if "started0" in patches:
        inner = transport.Connection.publish

        def publish_started0(self: Any, topic: str, payload: bytes, **kw: Any) -> int:
            if b'"state":"started"' in payload[:200]:
                kw["qos"] = 0
            return inner(self, topic, payload, **kw)
        transport.Connection.publish = publish_started0  # type: ignore[method-assign]


def from_env() -> None:
    patches = {p for p in os.environ.get(PATCH_ENV, "").split("+") if p}
    if patches:
        apply(patches)


def main() -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench import clients
    from bench.cluster import PY, Procs, install_cleanup
    from bench.run import unique
    from tests.brokers import MosquittoProcess

    install_cleanup()
    variants = sys.argv[1:] or ["baseline", "noprops", "started0", "conc2", "noprops+started0+conc2"]
    runs, n = 3, 10_000
    results: dict[str, list[float]] = {}
    with MosquittoProcess() as mq:
        for variant in variants:
            patches = set(variant.split("+")) - {"baseline"}
            env = {PATCH_ENV: "+".join(sorted(patches))}
            prefix = unique("x")
            conc = ["--concurrency", "2"] if "conc2" in patches else []
            workers = [Procs.start(f"w{i}", [PY, "-m", "bench.procs", "mqtt-worker", "--broker", mq.url,
                                             "--prefix", prefix, "--parent-pid", str(os.getpid()), *conc],
                                   env=env) for i in range(2)]
            for w in workers:
                w.wait_ready(30)
            os.environ[PATCH_ENV] = env[PATCH_ENV]
            import importlib

            from mqtt_tasks import transport
            from mqtt_tasks.transport import connection
            importlib.reload(connection)  # undo the previous variant's patches in this process
            importlib.reload(transport)  # and re-export the fresh Connection
            import mqtt_tasks.app as app_mod
            app_mod.Connection = transport.Connection
            from_env()
            client = clients.MqttTasksClient(mq.url, prefix)
            client.throughput(500)
            rates = [client.throughput(n).rate for _ in range(runs)]
            client.close()
            Procs.stop(*workers)
            results[variant] = rates
            print(f"{variant:<28} median {statistics.median(rates):7,.0f} tasks/s  "
                  f"(min {min(rates):,.0f}, max {max(rates):,.0f})", flush=True)
    base = statistics.median(results.get("baseline", [0])) or None
    if base:
        for variant, rates in results.items():
            print(f"{variant:<28} {statistics.median(rates) / base:.2f}x baseline")


if __name__ == "__main__":
    main()
