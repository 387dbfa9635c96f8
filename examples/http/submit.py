"""Submit a task over HTTP and print its result: what a service that does not speak MQTT does.

    python examples/http/submit.py http://127.0.0.1:8080 add 2 3          # prints 5

Needs `mqtt-tasks dashboard` running (docs/dashboard.md) and a worker for the task; only the
standard library here. Exits 1 with the error when the task fails or the server refuses it.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request


def submit(base: str, task: str, args: list[object], wait: float = 30.0) -> dict[str, object]:
    request = urllib.request.Request(f"{base.rstrip('/')}/api/tasks?wait={wait:g}", method="POST",
                                     data=json.dumps({"task": task, "args": args}).encode(),
                                     headers={"content-type": "application/json"})
    token = os.environ.get("MQTT_TASKS_DASHBOARD_TOKEN")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=wait + 5) as response:
            answer: dict[str, object] = json.load(response)
    except urllib.error.HTTPError as exc:
        answer = json.load(exc)  # {"error": ..., "status": ...}
    return answer


def main() -> int:
    base, task, *raw = sys.argv[1:]
    answer = submit(base, task, [json.loads(a) for a in raw])
    if answer.get("state") == "succeeded":
        print(json.dumps(answer["result"]))
        return 0
    print(f"error: {answer.get('error') or answer.get('state')}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
