"""Version 2 of the example's ``text.shout`` task, to roll out with ``mqtt-tasks deploy``.

A bundle is one module that defines ``app``, a ``TaskApp``, and its tasks; a worker that takes it
replaces its own ``text.shout`` with this one between tasks (examples/README.md, docs/deploy.md).
"""

from mqtt_tasks import TaskApp

app = TaskApp()


@app.task(name="text.shout")
def shout(text: str, times: int = 1) -> str:
    """Now with an exclamation mark."""
    return " ".join([text.upper() + "!"] * times)
