"""Rate-limited tasks whose bodies write a ledger (``start ID KEY TIME PID`` lines), for the
end-to-end rate-limit tests: start times counted from the task bodies, not from the coordinator."""

from __future__ import annotations

import os
import time

from mqtt_tasks.app import TaskApp
from mqtt_tasks.config import Settings


def _write(ledger: str, ident: str, key: str) -> None:
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"start {ident} {key} {time.time():.6f} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def make_app(url: str, prefix: str, ledger: str, limit: str = "4/s", key_limit: str = "2/s",
             signing_key: str | None = None) -> TaskApp:
    app = TaskApp(settings=Settings.from_url(url, prefix=prefix, signing_key=signing_key))

    @app.task(name="limited", rate_limit=limit)
    def limited(ident: str) -> str:
        _write(ledger, ident, "-")
        return ident

    @app.task(name="per_device", rate_limit=key_limit, rate_key="device")
    def per_device(ident: str, device: str) -> str:
        _write(ledger, ident, device)
        return ident

    return app


def starts(ledger: str, key: str | None = None) -> dict[str, list[float]]:
    """task ident -> its start times (of one rate key, or all)."""
    out: dict[str, list[float]] = {}
    if not os.path.exists(ledger):
        return out
    with open(ledger) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 5 and key in (None, parts[2]):
                out.setdefault(parts[1], []).append(float(parts[3]))
    return out

