"""The mqtt-tasks benchmark suite: ``python -m bench`` (``--quick`` for a one-minute smoke run).

Modules:

- ``run``        orchestration: every workload, the table, ``bench/results/latest.json``, the chart
- ``procs``      the child processes: mqtt-tasks worker, bare paho worker, embedded amqtt broker,
                 simulated heartbeat workers (``python -m bench.procs <role> ...``)
- ``clients``    the producers in the bench process: mqtt-tasks, bare paho, Celery, Dramatiq
- ``cluster``    starting, waiting for and cleaning up child processes
- ``stats``      medians, percentiles, the table
- ``chart``      the PNG (docs/bench-throughput.png)
- ``blackbox``   latency from outside: ``mosquitto_pub -l`` -> workers -> ``mosquitto_sub``, with and
                 without the coordinator (``--only blackbox``)
- ``fleetsim``   thousands of simulated workers per process on raw asyncio MQTT connections
- ``scale``      one coordinator against 200 and 10,000 of them (``--only fleet``)
- ``dispatchpass`` the coordinator's dispatch pass over a fleet of 10,000, in-process
- ``celery_app``, ``dramatiq_app``   the peers' no-op task modules
"""
