"""Child processes of the benchmark: ``python -m bench.procs <role> [options]``.

Every role prints ``READY ...`` on stdout once it can take traffic, then runs until SIGTERM
(or SIGINT), or until its parent dies (``--parent-pid``), so that nothing outlives a bench run.

Roles:

- ``mqtt-worker``   an ``mqtt_tasks.Worker`` with a ``noop`` task: what ``mqtt-worker`` runs
- ``paho-worker``   the ceiling: a bare paho client taking tasks from a shared subscription and
                    replying QoS 1 on the task's ``reply_to``, TCP_NODELAY on, nothing else
- ``amqtt-broker``  ``mqtt_tasks.broker.EmbeddedBroker`` in a process of its own (its own GIL)
- ``sim-workers``   N MQTT connections that heartbeat like workers (retained state, Last Will)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

READY = "READY"


def _stop_event(parent_pid: int | None) -> threading.Event:
    """Set on SIGTERM/SIGINT, or when the parent process disappears."""
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if parent_pid:
        def watch() -> None:
            while not stop.wait(1.0):
                if os.getppid() != parent_pid:
                    stop.set()
        threading.Thread(target=watch, name="bench-parent-watch", daemon=True).start()
    return stop


def _ready(**info: Any) -> None:
    print(READY, json.dumps(info), flush=True)


# -- mqtt-tasks worker -------------------------------------------------------------------------
def mqtt_worker(args: argparse.Namespace) -> None:
    from bench.experiments import from_env

    from_env()  # bench.experiments variants only; a no-op unless BENCH_PATCH is set
    from mqtt_tasks import TaskApp, Worker

    app = TaskApp(args.broker, prefix=args.prefix)

    @app.task(name="noop")
    def noop() -> None:
        return None

    worker = Worker(app, concurrency=args.concurrency or None, heartbeat_s=args.heartbeat)
    stop = _stop_event(args.parent_pid)
    worker.start()
    _ready(pid=os.getpid(), worker=worker.worker_id)
    while not stop.wait(0.5):
        pass
    worker.stop(grace=2.0)


# -- bare paho worker (the ceiling) ------------------------------------------------------------
def paho_worker(args: argparse.Namespace) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    stop = _stop_event(args.parent_pid)
    subscribed = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-paho-w-{os.getpid()}",
                         protocol=paho.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    topic = f"$share/bench/{args.prefix}/tasks/default"

    def on_connect(c: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.subscribe(topic, qos=1)

    def on_subscribe(c: paho.Client, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        subscribed.set()

    def on_message(c: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        task = json.loads(msg.payload)
        reply = {"id": task["id"], "state": "succeeded", "attempt": task.get("attempt", 1),
                 "result": None, "ts": time.time()}
        reply_to = task.get("reply_to") or f"{args.prefix}/status/{task['id']}"  # black-box: the status topic
        c.publish(reply_to, json.dumps(reply, separators=(",", ":")), qos=1)

    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    host, port = _host_port(args.broker)
    client.connect(host, port, keepalive=30)
    client.loop_start()
    if not subscribed.wait(10):
        sys.exit("paho worker: no SUBACK within 10 s")
    _ready(pid=os.getpid())
    while not stop.wait(0.5):
        pass
    client.disconnect()
    client.loop_stop()


def _host_port(url: str) -> tuple[str, int]:
    hostport = url.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    return host, int(port)


# -- embedded amqtt broker ---------------------------------------------------------------------
def amqtt_broker(args: argparse.Namespace) -> None:
    from mqtt_tasks.broker import EmbeddedBroker

    stop = _stop_event(args.parent_pid)
    with EmbeddedBroker("127.0.0.1", 0) as broker:
        _ready(pid=os.getpid(), url=broker.url, port=broker.port)
        while not stop.wait(0.5):
            pass


# -- simulated workers (connections with heartbeats) -------------------------------------------
def sim_workers(args: argparse.Namespace) -> None:
    """N connections publishing retained worker heartbeats every ``--heartbeat`` seconds."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    stop = _stop_event(args.parent_pid)
    host, port = _host_port(args.broker)
    clients = []
    tag = f"sim{os.getpid()}"
    for i in range(args.count):
        wid = f"{tag}-{i}"
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=wid, protocol=paho.MQTTv5)
        c.will_set(f"{args.prefix}/workers/{wid}", json.dumps({"worker": wid, "state": "offline",
                                                                "ts": time.time()}), qos=1, retain=True)
        c.connect(host, port, keepalive=30)
        c.loop_start()
        clients.append((wid, c))
    connected_by = time.monotonic() + 30
    while time.monotonic() < connected_by and not all(c.is_connected() for _, c in clients):
        time.sleep(0.05)
    _ready(pid=os.getpid(), connected=sum(c.is_connected() for _, c in clients))
    n = 0
    while not stop.is_set():
        start = time.monotonic()
        for wid, c in clients:
            state = {"worker": wid, "state": "online", "queues": ["sim"], "concurrency": 8, "tasks": [],
                     "ts": time.time(), "heartbeat_s": args.heartbeat, "free": 0, "group": "sim"}
            c.publish(f"{args.prefix}/workers/{wid}", json.dumps(state), qos=1, retain=True)
            n += 1
        stop.wait(max(0.0, args.heartbeat - (time.monotonic() - start)))
    for wid, c in clients:
        c.publish(f"{args.prefix}/workers/{wid}", json.dumps({"worker": wid, "state": "offline",
                                                               "ts": time.time()}), qos=1, retain=True)
        c.publish(f"{args.prefix}/workers/{wid}", b"", qos=1, retain=True)  # clear the retained state
        c.disconnect()
        c.loop_stop()


ROLES = {"mqtt-worker": mqtt_worker, "paho-worker": paho_worker, "amqtt-broker": amqtt_broker,
         "sim-workers": sim_workers}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.procs")
    parser.add_argument("role", choices=sorted(ROLES))
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--prefix", default="bench")
    parser.add_argument("--concurrency", type=int, default=0)
    parser.add_argument("--heartbeat", type=float, default=2.0)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--parent-pid", type=int, default=0)
    args = parser.parse_args(argv)
    ROLES[args.role](args)


if __name__ == "__main__":
    main()
