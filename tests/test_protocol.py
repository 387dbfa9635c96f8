"""The pure parts: codec, topics, settings and broker URLs, wire models, result outcomes. No broker."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest

from mqtt_tasks import (
    ConfigError,
    DecodeError,
    PayloadTooLargeError,
    Settings,
    StatusEvent,
    TaskCancelledError,
    TaskDeadError,
    TaskExpiredError,
    TaskFailedError,
    TLSSettings,
    WorkerState,
)
from mqtt_tasks.app import TaskApp, outcome
from mqtt_tasks.config import DEFAULT_BROKER, ENV_BROKER
from mqtt_tasks.protocol import codec, events
from mqtt_tasks.protocol.messages import ErrorReport, Task
from mqtt_tasks.protocol.topics import Topics, check_name, check_prefix, is_valid_id
from tests.tasks_fixture import BAD_TASKS

# -- codec ---------------------------------------------------------------------------------------------


def test_task_round_trip_with_defaults_and_unknown_fields_kept() -> None:
    task = codec.decode_task(b'{"id":"job-1","task":"add","args":[2,3],"mine":{"x":1}}',
                             topic="p/tasks/default", queue="default")
    assert (task.id, task.task, task.args, task.kwargs, task.attempt) == ("job-1", "add", [2, 3], {}, 1)
    assert task.queue == "default"
    again = json.loads(codec.encode(task))
    assert again["mine"] == {"x": 1}, "a producer's own fields survive re-encoding"
    assert "timeout" not in again, "None fields are left out"


def test_encode_is_compact_utf8_json() -> None:
    assert codec.encode({"a": [1, 2], "s": "é"}) == '{"a":[1,2],"s":"é"}'.encode()


@pytest.mark.parametrize("value", [{1, 2}, object(), float("nan")])
def test_encode_refuses_what_is_not_json(value: object) -> None:
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        codec.encode({"result": value})



@pytest.mark.parametrize("case", list(BAD_TASKS))
def test_every_bad_task_is_one_decode_error_with_a_reason(case: str) -> None:
    payload, reason = BAD_TASKS[case]
    with pytest.raises(DecodeError) as info:
        codec.decode_task(payload, topic="p/tasks/q")
    assert reason in info.value.reason
    assert info.value.payload == payload and info.value.topic == "p/tasks/q"


def test_decode_error_names_the_task_id_where_it_can_be_read() -> None:
    with pytest.raises(DecodeError) as info:
        codec.decode_task(b'{"id":"job-7","task":"add","args":{"x":1}}')
    assert info.value.task_id == "job-7"
    with pytest.raises(DecodeError) as info:
        codec.decode_task(b'{"id":"a/b","task":"add"}')
    assert info.value.task_id is None, "an unsafe id is never echoed as a task id"


def test_oversize_payload_is_a_decode_error_before_parsing() -> None:
    payload = json.dumps({"id": "big", "task": "add", "args": ["x" * 2000]}).encode()
    with pytest.raises(DecodeError, match="exceeds the 1024-byte cap") as info:
        codec.decode_task(payload, max_payload=1024)
    assert info.value.task_id == "big"


def test_check_size_raises_payload_too_large() -> None:
    assert codec.check_size(b"x" * 10, 10) == b"x" * 10
    with pytest.raises(PayloadTooLargeError) as info:
        codec.check_size(b"x" * 11, 10, topic="t")
    assert (info.value.size, info.value.limit, info.value.topic) == (11, 10, "t")


def test_error_report_carries_a_truncated_printable_payload() -> None:
    report = events.error_report(component="worker", reason="bad", ts=1.0, topic="p/tasks/q",
                                payload=b"\xff" + b"a" * 1000, task_id=None)
    assert report["size"] == 1001
    assert report["payload"].endswith("...") and len(report["payload"]) < 600
    assert ErrorReport.model_validate(report).reason == "bad"  # what the builder makes is a valid report


def test_decode_json_object_refuses_arrays_and_bytes() -> None:
    assert codec.decode_json_object(b'{"op":"cancel"}') == {"op": "cancel"}
    for bad in (b"[1]", b"\xff", b"nope"):
        with pytest.raises(DecodeError):
            codec.decode_json_object(bad)


# -- topics --------------------------------------------------------------------------------------------


def test_topics_build_and_parse() -> None:
    t = Topics("acme/jobs")
    assert t.tasks("default") == "acme/jobs/tasks/default"
    assert t.shared_tasks("workers", "q") == "$share/workers/acme/jobs/tasks/q"
    assert t.status("id-1") == "acme/jobs/status/id-1"
    assert t.worker("w1") == "acme/jobs/workers/w1"
    assert t.errors == "acme/jobs/errors"
    assert t.all_tasks == "acme/jobs/tasks/+" and t.all_status == "acme/jobs/status/+"
    assert t.queue_of("acme/jobs/tasks/q") == "q"
    assert t.queue_of("acme/jobs/tasks/q/extra") is None
    assert t.queue_of("other/tasks/q") is None
    assert t.task_id_of_status("acme/jobs/status/x") == "x"
    assert t.worker_of("acme/jobs/workers/") is None


@pytest.mark.parametrize("value,ok", [("a", True), ("A-z_0.9:x", True), ("x" * 128, True), ("x" * 129, False),
                                      ("", False), ("a/b", False), ("a#", False), ("a+", False), ("é", False)])
def test_id_rule(value: str, ok: bool) -> None:
    assert is_valid_id(value) is ok


@pytest.mark.parametrize("prefix", ["", "a//b", "/a", "a/", "$SYS", "a/+", "a/#"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError):
        check_prefix(prefix)


def test_bad_queue_name_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid queue"):
        check_name("queue", "a/b")


# -- settings and broker URLs ------------------------------------------------------------------------


def test_default_url() -> None:
    s = Settings.from_url(None)
    assert (s.host, s.port, s.transport, s.tls, s.protocol, s.prefix) == (
        "127.0.0.1", 1883, "tcp", None, "auto", "mqtt-tasks")


def test_mqtt_url_with_credentials_query_and_bare_host() -> None:
    s = Settings.from_url("mqtt://al%40ice:p%3Ass@broker.example:1884?protocol=mqtt311&prefix=acme/jobs")
    assert (s.host, s.port, s.username, s.password) == ("broker.example", 1884, "al@ice", "p:ss")
    assert (s.protocol, s.prefix) == ("3.1.1", "acme/jobs")
    assert "p:ss" not in s.display_url and s.display_url == "mqtt://al@ice@broker.example:1884"
    assert Settings.from_url("broker.example").port == 1883


@pytest.mark.parametrize("value", ["0", "-1", "2.5", "x", "70000"])
def test_keepalive_from_the_url_is_whole_seconds(value: str) -> None:
    assert Settings.from_url("mqtt://h?keepalive=2").keepalive == 2
    assert Settings.from_url("mqtt://h").keepalive == 30
    with pytest.raises(ConfigError, match="keepalive"):
        Settings.from_url(f"mqtt://h?keepalive={value}")


def test_mqtts_url_builds_tls_settings(tmp_path: Path) -> None:
    s = Settings.from_url("mqtts://h?ca=/etc/ca.pem&cert=/c.pem&key=/k.pem")
    assert s.port == 8883 and s.tls == TLSSettings("/etc/ca.pem", "/c.pem", "/k.pem", insecure=False)
    insecure = Settings.from_url("mqtts://h:9999?insecure=1")
    assert insecure.port == 9999 and insecure.tls is not None and insecure.tls.insecure
    ctx = insecure.tls.context()
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
    assert Settings.from_url("mqtts://h").tls.context().verify_mode == ssl.CERT_REQUIRED  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="TLS setup failed"):
        TLSSettings(ca_file=str(tmp_path / "missing.pem")).context()


def test_websocket_urls() -> None:
    ws = Settings.from_url("ws://h/custom")
    assert (ws.transport, ws.port, ws.ws_path, ws.tls) == ("websockets", 80, "/custom", None)
    wss = Settings.from_url("wss://u:p@h")
    assert (wss.transport, wss.port, wss.ws_path, wss.username) == ("websockets", 443, "/mqtt", "u")
    assert wss.tls is not None
    assert wss.display_url == "wss://u@h:443"


@pytest.mark.parametrize("url,match", [
    ("http://h", "unsupported broker URL scheme"),
    ("mqtt://h:notaport", "invalid port"),
    ("mqtt://:1883", "no host"),
    ("mqtt://h?protocol=7", "unknown MQTT protocol"),
    ("mqtt://h?prefix=a/%23", "invalid topic prefix"),
])
def test_bad_urls_are_config_errors(url: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Settings.from_url(url)


def test_tls_options_on_a_plain_url_are_refused() -> None:
    with pytest.raises(ConfigError, match="use mqtts"):
        Settings.from_url("mqtt://h", tls=TLSSettings())


def test_overrides_and_validation() -> None:
    s = Settings.from_url("mqtt://h", prefix="p1", max_payload=4096, heartbeat_s=0.5)
    assert (s.prefix, s.max_payload, s.heartbeat_s) == ("p1", 4096, 0.5)
    with pytest.raises(ConfigError, match="max_payload"):
        s.with_(max_payload=10)
    with pytest.raises(ConfigError, match="heartbeat_s"):
        s.with_(heartbeat_s=0)


def test_env_default_is_read_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_BROKER, "mqtt://envhost:1999")
    assert Settings.from_env().host == "envhost"
    assert Settings.from_env("mqtt://explicit:1").host == "explicit", "an explicit URL wins"
    assert TaskApp().settings.port == 1999, "TaskApp defaults to the environment"
    assert Settings.from_url(None).host == "127.0.0.1", "from_url never reads the environment"
    monkeypatch.delenv(ENV_BROKER)
    assert Settings.from_env().url == DEFAULT_BROKER


# -- models and outcomes --------------------------------------------------------------------------------


def test_status_event_and_worker_state_models() -> None:
    event = StatusEvent.model_validate({"id": "a", "state": "succeeded", "ts": 1.0, "result": [1]})
    assert event.attempt == 1 and event.result == [1]
    with pytest.raises(ValueError):
        StatusEvent.model_validate({"id": "a", "state": "exploded", "ts": 1.0})
    state = WorkerState.model_validate({"worker": "w", "state": "online", "ts": 1.0,
                                        "tasks": [{"id": "t1", "attempt": 2}]})
    assert state.tasks[0].attempt == 2
    with pytest.raises(ValueError):
        WorkerState.model_validate({"worker": "w", "state": "asleep", "ts": 1.0})
    with pytest.raises(ValueError):
        Task.model_validate({"id": "a", "task": "1bad"})


def _event(**fields: object) -> StatusEvent:
    return StatusEvent.model_validate({"id": "t1", "ts": 1.0, **fields})


def test_outcome_maps_final_events_to_values_and_errors() -> None:
    assert outcome(_event(state="succeeded", result={"x": 1})) == {"x": 1}
    with pytest.raises(TaskFailedError) as info:
        outcome(_event(state="failed", attempt=2, error={"type": "ValueError", "message": "no", "traceback": "tb"}))
    err = info.value
    assert (err.task_id, err.error_type, err.error_message, err.remote_traceback, err.attempt) == (
        "t1", "ValueError", "no", "tb", 2)
    assert "ValueError: no" in str(err)
    with pytest.raises(TaskDeadError):
        outcome(_event(state="dead", reason="attempts exhausted"))
    with pytest.raises(TaskExpiredError):
        outcome(_event(state="expired"))
    with pytest.raises(TaskCancelledError, match="by operator"):
        outcome(_event(state="cancelled", reason="by operator"))


def test_task_registration_rules() -> None:
    app = TaskApp("mqtt://127.0.0.1:1", prefix="p")

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    @app.task(name="img.resize", queue="images", timeout=5)
    def resize() -> None:
        return None

    assert add(2, 3) == 5, "calling a task runs it locally"
    assert add.name == "add" and add.options.queue == "default"
    assert resize.name == "img.resize" and resize.options.queue == "images" and resize.options.timeout == 5
    assert app.queues == ["default", "images"]
    with pytest.raises(ConfigError, match="already registered"):
        app.task(name="add")(lambda: None)
    with pytest.raises(ConfigError, match="invalid task name"):
        app.task(name="bad name")(lambda: None)
    with pytest.raises(ValueError, match="invalid queue"):
        app.task(name="ok", queue="a/b")(lambda: None)
    with pytest.raises(ConfigError, match="invalid task id"):
        app.send("add", (1, 2), task_id="bad/id")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), object()])
def test_what_json_cannot_carry_is_an_encode_error(value: object) -> None:
    from mqtt_tasks import EncodeError

    with pytest.raises(EncodeError, match="not JSON-serialisable") as info:
        codec.encode({"args": [value]})
    assert isinstance(info.value, ValueError)  # what callers caught before still catches it


def test_bad_names_are_config_errors() -> None:
    from mqtt_tasks import ConfigError

    with pytest.raises(ConfigError, match="invalid queue"):
        check_name("queue", "a/b")
    with pytest.raises(ConfigError, match="invalid topic prefix"):
        check_prefix("$SYS")
