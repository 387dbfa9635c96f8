"""Signed tasks (mqtt_tasks.signing): off by default; with a key, unsigned and tampered tasks are
refused with one report on P/errors and signed ones run. End to end on Mosquitto."""

from __future__ import annotations

import json
import threading

import pytest

from mqtt_tasks import ConfigError, Settings, TaskApp, Worker
from mqtt_tasks.protocol.topics import Topics
from mqtt_tasks.signing import SignatureError, canonical, sign, verify
from mqtt_tasks.transport import Connection, Message
from tests.brokers import MosquittoProcess, wait_until

KEY = "k" * 32


# -- pure ---------------------------------------------------------------------------------------

def test_redispatch_fields_are_not_signed_so_a_retried_task_still_verifies() -> None:
    signed = sign({"id": "t1", "task": "add", "args": [1, 2], "timeout": 5}, KEY)
    # What the coordinator or a handing-back worker sends: attempt and queue set, defaults filled
    # in, the timeout re-encoded as a float.
    verify({**signed, "attempt": 3, "queue": "default", "kwargs": {}, "timeout": 5.0, "reply_to": None}, KEY)
    # A suspect dispatched again to run alone, by a coordinator with or without the key.
    verify({**signed, "attempt": 3, "alone": True}, KEY)


@pytest.mark.parametrize("change", [
    {"args": [1, 3]}, {"task": "sub"}, {"id": "t2"}, {"kwargs": {"x": 1}}, {"reply_to": "evil/topic"},
    {"timeout": 500}, {"expires_at": 1e12}, {"max_attempts": 1000}, {"mine": "added"},
])
def test_any_other_change_breaks_the_signature(change: dict[str, object]) -> None:
    signed = sign({"id": "t1", "task": "add", "args": [1, 2], "timeout": 5}, KEY)
    with pytest.raises(SignatureError, match="does not match"):
        verify({**signed, **change}, KEY)


def test_unsigned_and_wrong_key() -> None:
    with pytest.raises(SignatureError, match="unsigned"):
        verify({"id": "t1", "task": "add"}, KEY)
    with pytest.raises(SignatureError, match="does not match"):
        verify(sign({"id": "t1", "task": "add"}, "x" * 32), KEY)


def test_canonical_form_is_sorted_compact_utf8() -> None:
    assert canonical({"task": "é", "id": "a", "args": [1.0], "sig": "x", "attempt": 2}) == \
        '{"args":[1],"id":"a","task":"é"}'.encode()


def test_short_keys_are_refused() -> None:
    with pytest.raises(ConfigError, match="at least 16"):
        Settings.from_url("mqtt://127.0.0.1", signing_key="short")


def test_signing_is_off_by_default() -> None:
    assert Settings.from_url("mqtt://127.0.0.1").signing_key is None


# -- end to end ------------------------------------------------------------------------------

class Errors:
    def __init__(self, broker: MosquittoProcess, topics: Topics) -> None:
        self.reports: list[dict[str, object]] = []
        self._lock = threading.Lock()
        self.conn = Connection(Settings.from_url(broker.url), "err-watch", on_message=self._add)
        self.conn.subscribe(topics.errors)

    def _add(self, m: Message) -> None:
        with self._lock:
            self.reports.append(json.loads(m.payload))

    def for_id(self, task_id: str) -> list[dict[str, object]]:
        with self._lock:
            return [r for r in self.reports if r.get("id") == task_id]


def test_signed_tasks_run_unsigned_and_tampered_are_reported(mosquitto: MosquittoProcess, prefix: str) -> None:
    topics = Topics(prefix)
    settings = Settings.from_url(mosquitto.url, prefix=prefix, signing_key=KEY)
    app = TaskApp(settings=settings)
    ran: list[tuple[int, int]] = []

    @app.task
    def add(a: int, b: int) -> int:
        ran.append((a, b))
        return a + b

    errors = Errors(mosquitto, topics)
    errors.conn.connect()
    raw = Connection(Settings.from_url(mosquitto.url), "attacker").connect()
    try:
        with Worker(app, concurrency=2), app:
            assert add.submit(2, 3).result(timeout=10) == 5  # signed by TaskApp, verified by the worker

            raw.publish(topics.tasks("default"), b'{"id":"unsigned-1","task":"add","args":[1,1]}')
            tampered = sign({"id": "tampered-1", "task": "add", "args": [1, 2]}, KEY) | {"args": [100, 200]}
            raw.publish(topics.tasks("default"), json.dumps(tampered).encode())
            other_key = sign({"id": "otherkey-1", "task": "add", "args": [1, 2]}, "z" * 32)
            raw.publish(topics.tasks("default"), json.dumps(other_key).encode())
            for task_id, reason in (("unsigned-1", "unsigned"), ("tampered-1", "does not match"),
                                    ("otherkey-1", "does not match")):
                wait_until(lambda t=task_id: errors.for_id(t), message=f"no error report for {task_id}")
                (report,) = errors.for_id(task_id)
                assert reason in str(report["reason"]) and report["component"] == "worker"

            # A re-dispatch (attempt 2, queue filled in) of a correctly signed task still runs.
            redispatched = sign({"id": "retry-1", "task": "add", "args": [4, 4]}, KEY) | {"attempt": 2,
                                                                                        "queue": "default"}
            raw.publish(topics.tasks("default"), json.dumps(redispatched).encode())
            wait_until(lambda: (4, 4) in ran, message="the re-dispatched signed task did not run")
            # So does a suspect a keyless coordinator marks to run alone (the field is not signed).
            suspect = sign({"id": "suspect-1", "task": "add", "args": [6, 6]}, KEY) | {"attempt": 3, "alone": True}
            raw.publish(topics.tasks("default"), json.dumps(suspect).encode())
            wait_until(lambda: (6, 6) in ran, message="the signed suspect marked alone did not run")
            assert add.submit(5, 5).result(timeout=10) == 10  # and the worker still takes good tasks
        assert (1, 1) not in ran and (100, 200) not in ran and len(ran) == 4
    finally:
        raw.close(1.0)
        errors.conn.close(1.0)


def test_worker_without_a_key_ignores_sig(mosquitto: MosquittoProcess, prefix: str) -> None:
    app = TaskApp(settings=Settings.from_url(mosquitto.url, prefix=prefix, signing_key=KEY))
    plain = TaskApp(settings=Settings.from_url(mosquitto.url, prefix=prefix))

    @plain.task
    def add(a: int, b: int) -> int:
        return a + b

    with Worker(plain, concurrency=1), app:
        assert app.submit("add", 1, 2).result(timeout=10) == 3


@pytest.mark.parametrize("sig", ["é" * 64, "\udc80", "ff" * 32 + "é"])
def test_a_signature_that_is_not_ascii_is_refused_not_a_crash(sig: str) -> None:
    """It raised TypeError (hmac.compare_digest on non-ASCII text): the worker then never
    acknowledged the message, which held one of its in-flight slots for good."""
    task = {"id": "t1", "task": "add", "args": [1, 2], "sig": sig}
    with pytest.raises(SignatureError, match="does not match"):
        verify(task, "k" * 32)
