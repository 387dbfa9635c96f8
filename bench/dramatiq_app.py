"""The Dramatiq peer: a no-op actor with the Redis broker and the Redis results backend
(DB ``BENCH_DRAMATIQ_REDIS``, default 10).

Workers: ``dramatiq bench.dramatiq_app -p P -t T`` (started by ``bench.run``).
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

REDIS_URL = os.environ.get("BENCH_DRAMATIQ_REDIS", "redis://127.0.0.1:6379/10")

broker = RedisBroker(url=REDIS_URL)
broker.add_middleware(Results(backend=RedisBackend(url=REDIS_URL)))
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True, max_retries=0)
def noop() -> None:
    return None
