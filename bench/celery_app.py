"""The Celery peer: a no-op task, Redis as broker and result backend (DB ``BENCH_REDIS_DB``, 9).

Workers: ``celery -A bench.celery_app worker ...`` (started by ``bench.run``). Prints ``READY``
when the worker is ready, so the bench can time it without per-task logging.
"""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_ready

REDIS_URL = os.environ.get("BENCH_CELERY_REDIS", "redis://127.0.0.1:6379/9")

app = Celery("bench", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_ignore_result=False,
    result_expires=600,
    worker_prefetch_multiplier=16,
    task_acks_late=False,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
    task_send_sent_event=False,
)


@app.task(name="noop")
def noop() -> None:
    return None


@worker_ready.connect
def _ready(**_kw: object) -> None:
    print("READY {}", flush=True)
