"""Child processes of ``mqtt-tasks demo``: ``broker`` or ``worker URL PREFIX WORKER_ID CONCURRENCY``."""

import sys

from .fleet import serve_broker, serve_worker

if sys.argv[1:2] == ["broker"]:
    serve_broker()
elif sys.argv[1:2] == ["worker"] and len(sys.argv) == 6:
    serve_worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
else:
    sys.exit("usage: python -m mqtt_tasks.demo broker | worker URL PREFIX WORKER_ID CONCURRENCY")
