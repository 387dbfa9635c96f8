"""Shared fixtures: real brokers on free ports and a unique topic prefix per test.

- `mosquitto`: a private Mosquitto from the shipped mosquitto.conf, stopped at teardown.
- `mosquitto_factory(extra_conf=(), start=True)`: more of them, or with config overrides.
- `amqtt_broker`: the embedded broker (`mqtt_tasks.broker.EmbeddedBroker`).
- `broker_kind` / `broker` / `broker_url`: parametrized over both brokers, so a behaviour test
  taking `broker_url` runs once as `[mosquitto]` and once as `[amqtt]`.
- `prefix`: a topic level unique to the test, so tests never see each other's messages.
- `postgres_url`: a private PostgreSQL database (tests/postgres.py), dropped at teardown.

Without Mosquitto installed its tests are skipped, unless MQTT_TASKS_REQUIRE_MOSQUITTO=1
(set it in CI) turns the skip into a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Protocol
from uuid import uuid4

import pytest

from tests.brokers import MosquittoProcess, find_mosquitto

BROKER_KINDS = ("mosquitto", "amqtt")
_FIXTURE_FOR_KIND = {"mosquitto": "mosquitto", "amqtt": "amqtt_broker"}
REQUIRE_MOSQUITTO_ENV = "MQTT_TASKS_REQUIRE_MOSQUITTO"


class MosquittoFactory(Protocol):
    """The type of the `mosquitto_factory` fixture, for annotations in tests."""

    def __call__(self, extra_conf: Iterable[str] = (), *, start: bool = True) -> MosquittoProcess: ...


def _mosquitto_executable() -> str:
    """The mosquitto path, or skip (fail when MQTT_TASKS_REQUIRE_MOSQUITTO=1) the test."""
    executable = find_mosquitto()
    if executable is not None:
        return executable
    reason = (
        "mosquitto not installed: no `mosquitto` on PATH, in /usr/sbin or in /usr/local/sbin "
        "(Debian/Ubuntu: apt-get install mosquitto; macOS: brew install mosquitto)"
    )
    if os.environ.get(REQUIRE_MOSQUITTO_ENV) == "1":
        pytest.fail(f"{reason}; required because {REQUIRE_MOSQUITTO_ENV}=1", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[MosquittoFactory]:
    """Make Mosquitto processes (each with its own port and directory); all stop at teardown."""
    executable = _mosquitto_executable()
    with ExitStack() as stops:  # stops every broker, even if stopping one of them fails
        count = 0

        def make(extra_conf: Iterable[str] = (), *, start: bool = True) -> MosquittoProcess:
            nonlocal count
            count += 1
            broker = MosquittoProcess(tmp_path / f"mosquitto-{count}", extra_conf=extra_conf, executable=executable)
            stops.callback(broker.stop)
            return broker.start() if start else broker

        yield make


@pytest.fixture
def mosquitto(mosquitto_factory: MosquittoFactory) -> MosquittoProcess:
    """A started Mosquitto running the shipped config on a free port."""
    return mosquitto_factory()


@pytest.fixture
def amqtt_broker() -> Iterator[Any]:
    """A started embedded amqtt broker on an ephemeral port."""
    from mqtt_tasks.broker import EmbeddedBroker  # lazily: an optional extra

    broker = EmbeddedBroker(host="127.0.0.1", port=0).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(params=BROKER_KINDS, ids=BROKER_KINDS)
def broker_kind(request: pytest.FixtureRequest) -> str:
    """Which broker this run of the test uses: "mosquitto" or "amqtt"."""
    kind: str = request.param
    return kind


@pytest.fixture
def broker(broker_kind: str, request: pytest.FixtureRequest) -> Any:
    """A freshly started broker of kind `broker_kind` (has `.url` and `.port`)."""
    return request.getfixturevalue(_FIXTURE_FOR_KIND[broker_kind])


@pytest.fixture
def broker_url(broker: Any) -> str:
    """The URL ("mqtt://127.0.0.1:PORT") of a fresh broker; the test runs once per broker kind."""
    url: str = broker.url
    return url


@pytest.fixture
def prefix() -> str:
    """A topic prefix unique to this test: one valid topic level (no / + # $)."""
    return f"t{uuid4().hex[:10]}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database of its own (tests/postgres.py), dropped at teardown."""
    from tests.postgres import private_database

    with private_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where a store opens (``tests.postgres.store_at``): an SQLite file, then a private
    PostgreSQL database, created and dropped."""
    if request.param == "sqlite":
        yield str(tmp_path / "store.db")
        return
    from tests.postgres import private_database

    with private_database() as url:
        yield url
