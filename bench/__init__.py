"""The mqtt-tasks benchmark suite: ``python -m bench`` (``--quick`` for a one-minute smoke run).

Modules:

- ``run``        orchestration: every workload, the table, ``bench/results/latest.json``, the chart
- ``procs``      the child processes: mqtt-tasks worker, bare paho worker, embedded amqtt broker,
                 simulated heartbeat workers (``python -m bench.procs <role> ...``)
- ``clients``    the producers in the bench process: mqtt-tasks, bare paho, Celery, Dramatiq
- ``cluster``    starting, waiting for and cleaning up child processes
- ``stats``      medians, percentiles, the table
- ``chart``      the PNG (docs/bench-throughput.png)
- ``celery_app``, ``dramatiq_app``   the peers' no-op task modules
"""
