"""Submit a few example tasks and print their results.

    mqtt-worker examples.tasks:app          # in one terminal (repo root)
    python examples/producer.py             # in another

Both read the broker from ``$MQTT_TASKS_BROKER`` (default mqtt://127.0.0.1:1883).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from examples.tasks import add, app, divide, fetch_later, shout, slow  # noqa: E402
from mqtt_tasks import TaskFailedError  # noqa: E402


def main() -> int:
    with app:
        handles = [add.submit(i, i) for i in range(10)]  # published at once, no round trip each
        print("add:", [h.result(timeout=10) for h in handles])
        print("text.shout:", shout.submit("hello", times=2).result(timeout=10))
        print("slow:", slow.submit(0.5, "done").result(timeout=10))
        print("fetch_later:", asyncio.run(wait_async()))
        try:
            divide.submit(1, 0).result(timeout=10)
        except TaskFailedError as exc:
            print(f"divide: failed remotely with {exc.error_type}: {exc.error_message}")
    return 0


async def wait_async() -> object:
    """Inside asyncio code, await the handle instead of blocking."""
    return await fetch_later.submit(0.1, "page")


if __name__ == "__main__":
    sys.exit(main())
