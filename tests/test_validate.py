"""The dependency-free validator accepts and rejects exactly what the pydantic model does."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from mqtt_tasks.protocol import validate
from mqtt_tasks.protocol.messages import Task

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
ids = st.one_of(st.from_regex(r"\A[A-Za-z0-9_.:\-]{1,130}\Z"), st.text(max_size=10))
names = st.one_of(st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_.:\-]{0,5}\Z"), st.text(max_size=6))
fields = {
    "id": ids, "task": names, "args": json_values, "kwargs": json_values,
    "attempt": json_values | st.integers(-2, 3), "max_attempts": json_values | st.integers(0, 1002),
    "timeout": json_values, "reply_to": json_values | st.sampled_from(["a/b", "a/+", "$x", ""]),
    "correlation": json_values, "expires_at": json_values, "queue": json_values | ids, "extra": json_values,
    "not_before": json_values, "priority": json_values | st.integers(-1, 10),
    "requires": json_values | st.lists(st.sampled_from(["gpu", "cam", "a b", "", "x" * 65, "a,b"]), max_size=4),
}
tasks = st.fixed_dictionaries({}, optional=fields)


def pydantic_accepts(payload: bytes) -> bool:
    try:
        Task.model_validate_json(payload)
    except ValidationError:
        return False
    return True


def fast_accepts(payload: bytes) -> bool:
    try:
        validate.decode_task(payload)
    except validate.Invalid:
        return False
    return True


@settings(max_examples=600, deadline=None)
@given(tasks)
def test_same_verdict_on_task_shaped_objects(obj: dict[str, Any]) -> None:
    payload = json.dumps(obj).encode()
    assert fast_accepts(payload) == pydantic_accepts(payload), payload


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()))
def test_same_verdict_on_arbitrary_input(payload: bytes) -> None:
    assert fast_accepts(payload) == pydantic_accepts(payload), payload


def test_fields_read_like_the_model() -> None:
    payload = b'{"id":"a","task":"add","args":[1],"timeout":2,"mine":true}'
    fast, model = validate.decode_task(payload), Task.model_validate_json(payload)
    for name in Task.model_fields:
        assert getattr(fast, name) == getattr(model, name), name
    assert fast["mine"] is True
