"""A task round trip over ws:// (the embedded broker's WebSocket listener), library end to end."""

from __future__ import annotations

from mqtt_tasks import TaskApp, Worker
from mqtt_tasks.broker import EmbeddedBroker


def test_round_trip_over_websocket(prefix: str) -> None:
    with EmbeddedBroker(websocket_port=0) as broker:
        url = f"ws://127.0.0.1:{broker.websocket_port}/"
        app = TaskApp(url, prefix=prefix)

        @app.task
        def add(a: int, b: int) -> int:
            return a + b

        with Worker(app, concurrency=2, grace=1) as worker, app:
            assert worker.connection.settings.transport == "websockets"
            assert not worker.connection.is_mqtt5  # amqtt: MQTT 3.1.1, found automatically
            assert add.submit(2, 3).result(timeout=10) == 5
