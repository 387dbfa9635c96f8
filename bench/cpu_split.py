"""``python -m bench.cpu_split {paho,mqtt,coord} [N]``: CPU microseconds per task, per process.

Runs N no-op tasks (default 20,000) end to end on a private Mosquitto, twice, and prints the CPU
time each process spent per task: the broker, the producer (this process), each worker and, for
``coord``, the coordinator. On a machine where every process shares the same cores, throughput is
roughly cores / (total CPU per task), so this says where a gap to the bare-paho ceiling comes from.
It also counts what crossed ``P/status/+`` and ``P/inbox/+`` (states, deferrals, dispatches) with a
QoS 0 subscriber in this process, whose own cost is in the producer's figure.
"""

from __future__ import annotations

import collections
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

from bench import clients, coord
from bench.cluster import Procs, cpu_s, install_cleanup
from bench.run import Bench, Config, unique


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    from tests.brokers import MosquittoProcess

    mode = sys.argv[1] if len(sys.argv) > 1 else "coord"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
    install_cleanup()
    bench = Bench(Config.make(False))
    with MosquittoProcess() as mq:
        bench.mosquitto = mq
        prefix = unique("split")
        procs = {}
        if mode == "coord":
            procs["coordinator"] = coord.start(mq.url, prefix, Path(tempfile.mkdtemp()) / "tasks.db")
        workers = bench.start_workers("paho-worker" if mode == "paho" else "mqtt-worker", mq.url, prefix)
        procs.update({f"worker{i}": w for i, w in enumerate(workers)})
        client = clients.PahoClient(mq.url, prefix) if mode == "paho" else clients.MqttTasksClient(mq.url, prefix)
        counts: collections.Counter[str] = collections.Counter()
        watcher = _watch(mq.url, prefix, counts)
        try:
            client.throughput(500)
            for _ in range(2):
                counts.clear()
                before = {k: cpu_s(p.pid) for k, p in procs.items()}
                broker0, self0 = cpu_s(mq.pid), _self_cpu()
                run = client.throughput(n)
                parts = {k: (cpu_s(p.pid) - before[k]) / n * 1e6 for k, p in procs.items()}
                parts["broker"] = (cpu_s(mq.pid) - broker0) / n * 1e6
                parts["producer"] = (_self_cpu() - self0) / n * 1e6
                shown = " ".join(f"{k} {v:.0f}" for k, v in parts.items())
                print(f"{mode}: {run.rate:,.0f} tasks/s (complete: {run.complete}); CPU us per task: {shown}; "
                      f"total {sum(parts.values()):.0f}; seen: {dict(counts)}", flush=True)
        finally:
            watcher.loop_stop()
            watcher.disconnect()
            client.close()
            Procs.close()


def _watch(url: str, prefix: str, counts: collections.Counter[str]):  # type: ignore[no-untyped-def]
    import paho.mqtt.client as paho

    def on_message(_c: object, _u: object, m: paho.MQTTMessage) -> None:
        if "/inbox/" in m.topic:
            counts["inbox dispatch"] += 1
            return
        try:
            counts[str(json.loads(m.payload).get("state"))] += 1
        except ValueError:
            counts["?"] += 1

    ready = collections.deque[int]()
    sub = paho.Client(paho.CallbackAPIVersion.VERSION2)
    sub.on_message = on_message
    sub.on_subscribe = lambda *a: ready.append(1)
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    sub.connect(host, int(port))
    sub.subscribe([(f"{prefix}/status/+", 0), (f"{prefix}/inbox/+", 0)])
    sub.loop_start()
    deadline = time.monotonic() + 10
    while not ready and time.monotonic() < deadline:
        time.sleep(0.01)  # waiting for the SUBACK, with a deadline
    return sub


if __name__ == "__main__":
    main()
