"""A TaskApp with one no-op task, for ``mqtt-worker bench.noop_app:app`` (the footprint section).

The broker and prefix come from ``MQTT_TASKS_BROKER`` (``mqtt://host:port?prefix=p``).
"""

from mqtt_tasks import TaskApp

app = TaskApp()


@app.task(name="noop")
def noop() -> None:
    return None
