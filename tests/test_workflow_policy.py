"""The workflow policy (``mqtt_tasks.flow``) as pure functions: no broker, no clock."""

from __future__ import annotations

from typing import Any

import pytest

from mqtt_tasks import flow
from mqtt_tasks.canvas import Signature as Sig
from mqtt_tasks.canvas import chain, chord, group, saga, step
from mqtt_tasks.errors import ConfigError
from mqtt_tasks.protocol import codec
from mqtt_tasks.protocol.messages import Workflow
from mqtt_tasks.store.workflows import WorkflowRecord

ERR = {"type": "RuntimeError", "message": "no"}


def build(message: dict[str, Any]) -> tuple[WorkflowRecord, list[flow.Effect]]:
    model = codec.decode(Workflow, codec.encode(message))  # the coordinator's path: validated first
    record = flow.new_workflow(model.model_dump(exclude_none=True), 0.0)
    return record, flow.begin(record, 0.0)


def submits(effects: list[flow.Effect] | None) -> list[tuple[str, list[Any]]]:
    assert effects is not None, "the event changed nothing"
    return [(e.task_id, e.body["args"]) for e in effects if isinstance(e, flow.Submit)]


def finals(effects: list[flow.Effect] | None) -> list[str]:
    assert effects is not None, "the event changed nothing"
    return [e.state for e in effects if isinstance(e, flow.Announce) and e.final]


def ok(record: WorkflowRecord, task_id: str, result: Any) -> list[flow.Effect] | None:
    return flow.on_step_final(record, task_id, "succeeded", result, None, None, 1.0)


def dead(record: WorkflowRecord, task_id: str) -> list[flow.Effect] | None:
    return flow.on_step_final(record, task_id, "dead", None, ERR, "attempts exhausted", 1.0)


def test_a_chain_passes_each_result_to_the_next_step_and_ends_with_the_last() -> None:
    wf, effects = build(chain(Sig("add", (2, 2)), Sig("add", (4,)), Sig("mul", (10,), immutable=True))
                        .to_message("c"))
    assert submits(effects) == [("c.0", [2, 2])]
    assert effects[0].body["workflow"] == "c" and effects[0].body["queue"] == "default"  # type: ignore[union-attr]
    assert submits(ok(wf, "c.0", 4)) == [("c.1", [4, 4])]
    assert submits(ok(wf, "c.1", 8)) == [("c.2", [10])]  # immutable: no result prepended
    assert finals(ok(wf, "c.2", 100)) == ["succeeded"]
    assert wf.state == "succeeded" and wf.result == 100


def test_a_failed_step_fails_the_chain_and_skips_the_rest() -> None:
    wf, _ = build(chain(Sig("a"), Sig("b"), Sig("c")).to_message("c"))
    ok(wf, "c.0", 1)
    effects = dead(wf, "c.1")
    assert finals(effects) == ["dead"] and not submits(effects)
    assert [s.state for s in wf.steps] == ["succeeded", "dead", "skipped"]
    assert wf.failed_step == 1 and wf.error == ERR
    assert "step 1 (b) dead: RuntimeError: no" in (wf.reason or "")


def test_a_step_outcome_counts_once_and_unknown_or_live_states_change_nothing() -> None:
    wf, _ = build(chain(Sig("a"), Sig("b")).to_message("c"))
    assert submits(ok(wf, "c.0", 1)) == [("c.1", [1])]
    assert ok(wf, "c.0", 1) is None  # a duplicate result
    assert ok(wf, "elsewhere", 1) is None
    assert flow.on_step_final(wf, "c.1", "started", None, None, None, 1.0) is None
    assert ok(wf, "c.1", 2) and ok(wf, "c.1", 3) is None  # finished: nothing more
    assert wf.result == 2


def test_a_group_waits_for_every_member_and_reports_each() -> None:
    wf, effects = build(group(Sig("sq", (i,)) for i in range(3)).to_message("g"))
    assert submits(effects) == [("g.0", [0]), ("g.1", [1]), ("g.2", [2])]
    assert ok(wf, "g.2", 4) == []
    assert ok(wf, "g.0", 0) == []
    assert finals(ok(wf, "g.1", 1)) == ["succeeded"]
    assert wf.result == [0, 1, 4]


def test_a_group_with_failed_members_is_dead_after_all_ended() -> None:
    wf, _ = build(group(Sig("sq", (i,)) for i in range(3)).to_message("g"))
    assert dead(wf, "g.1") == []  # the others still run
    ok(wf, "g.0", 0)
    assert finals(flow.on_step_final(wf, "g.2", "expired", None, None, "expired before it started", 1.0)) == ["dead"]
    views = flow.step_views(wf)
    assert [v["state"] for v in views] == ["succeeded", "dead", "expired"]
    assert views[0]["result"] == 0 and "RuntimeError" in views[1]["reason"]
    assert (wf.reason or "").startswith("2 of 3 members failed, first step 1 (sq)")


def test_a_chord_calls_back_with_the_list_or_skips_the_callback() -> None:
    wf, _ = build(chord(group(Sig("sq", (1,)), Sig("sq", (2,))), Sig("total", (), {"unit": "x"})).to_message("h"))
    ok(wf, "h.1", 4)
    effects = ok(wf, "h.0", 1)
    assert submits(effects) == [("h.callback", [[1, 4]])]
    assert effects[0].body["kwargs"] == {"unit": "x"}  # type: ignore[union-attr]
    assert finals(ok(wf, "h.callback", 5)) == ["succeeded"] and wf.result == 5
    bad, _ = build(chord([Sig("sq", (1,)), Sig("sq", (2,))], Sig("total")).to_message("b"))
    ok(bad, "b.0", 1)
    assert finals(dead(bad, "b.1")) == ["dead"]
    assert bad.callback is not None and bad.callback.state == "skipped"


def test_a_chord_whose_callback_fails_is_dead() -> None:
    wf, _ = build(chord(group(Sig("sq", (1,))), Sig("total")).to_message("h"))
    ok(wf, "h.0", 1)
    assert finals(dead(wf, "h.callback")) == ["dead"] and "callback (total)" in (wf.reason or "")


def saga3() -> tuple[WorkflowRecord, list[flow.Effect]]:
    return build(saga(step(Sig("charge", ("o", 30)), compensate=Sig("refund")),
                      step(Sig("note", ("o",))),  # nothing to undo
                      step(Sig("reserve", ("o",)), compensate=Sig("release", ("o",), immutable=True)),
                      step(Sig("ship", ("o",)), compensate=Sig("unship"))).to_message("s"))


def test_a_saga_that_succeeds_returns_every_step_result() -> None:
    wf, effects = saga3()
    assert submits(effects) == [("s.0", ["o", 30])]
    assert submits(ok(wf, "s.0", "ch-1")) == [("s.1", ["o"])]  # saga steps get no previous result
    ok(wf, "s.1", None)
    ok(wf, "s.2", "r-1")
    assert finals(ok(wf, "s.3", "sh-1")) == ["succeeded"] and wf.result == ["ch-1", None, "r-1", "sh-1"]


def test_a_failed_saga_step_undoes_the_done_steps_last_first_each_with_retries() -> None:
    wf, _ = saga3()
    ok(wf, "s.0", "ch-1")
    ok(wf, "s.1", None)
    ok(wf, "s.2", "r-1")
    effects = dead(wf, "s.3")
    assert [e.state for e in effects if isinstance(e, flow.Announce)] == ["compensating"]
    assert submits(effects) == [("s.2.undo", ["o"])]  # release is immutable: no result prepended
    undo = [e for e in effects if isinstance(e, flow.Submit)][0]
    assert undo.body["max_attempts"] == flow.COMPENSATION_MAX_ATTEMPTS
    assert wf.steps[3].undo_state is None  # the failed step is not compensated
    assert submits(ok(wf, "s.2.undo", None)) == [("s.0.undo", ["ch-1"])]  # refund gets the charge's result
    assert ok(wf, "s.2.undo", None) is None  # a duplicate
    assert finals(ok(wf, "s.0.undo", None)) == ["compensated"]
    assert wf.state == "compensated" and "undone: step 0, step 2" in (wf.reason or "")
    views = flow.step_views(wf)
    assert views[0]["compensate"] == {"id": "s.0.undo", "task": "refund", "state": "succeeded"}
    assert views[3]["state"] == "dead" and "compensate" in views[3] and views[3]["compensate"]["state"] is None


def test_a_saga_whose_compensation_fails_ends_dead_naming_what_was_not_undone() -> None:
    wf, _ = saga3()
    ok(wf, "s.0", "ch-1")
    ok(wf, "s.1", None)
    ok(wf, "s.2", "r-1")
    dead(wf, "s.3")
    assert submits(dead(wf, "s.2.undo")) == [("s.0.undo", ["ch-1"])]  # the others still run
    assert finals(ok(wf, "s.0.undo", None)) == ["dead"]
    assert "could not undo step 2 (reserve) (dead: RuntimeError: no)" in (wf.reason or "")


def test_a_saga_failing_at_its_first_step_is_compensated_at_once() -> None:
    wf, _ = saga3()
    effects = dead(wf, "s.0")
    assert [e.state for e in effects if isinstance(e, flow.Announce)] == ["compensating", "compensated"]
    assert [s.state for s in wf.steps] == ["dead", "skipped", "skipped", "skipped"]


@pytest.mark.parametrize(("message", "why"), [
    ({"id": "x", "kind": "chord", "steps": [{"task": "a"}]}, "needs a callback"),
    ({"id": "x", "kind": "chain", "steps": [{"task": "a"}], "callback": {"task": "b"}}, "needs a callback"),
    ({"id": "x", "kind": "chain", "steps": [{"task": "a", "compensate": {"task": "b"}}]}, "only a saga"),
    ({"id": "x", "kind": "chain", "steps": []}, "at least 1"),
    ({"id": "x", "kind": "loop", "steps": [{"task": "a"}]}, "kind"),
    ({"id": "x" * 101, "kind": "chain", "steps": [{"task": "a"}]}, "id"),
    ({"id": "x", "kind": "chain", "steps": [{"task": "1bad"}]}, "task"),
    ({"id": "x", "kind": "group", "steps": [{"task": "a"}] * 1001}, "at most 1000"),
])
def test_bad_workflows_do_not_decode(message: dict[str, Any], why: str) -> None:
    from mqtt_tasks.errors import DecodeError

    with pytest.raises(DecodeError, match=why):
        codec.decode(Workflow, codec.encode(message))


def test_the_python_api_refuses_what_the_wire_cannot_say() -> None:
    with pytest.raises(ConfigError, match="do not nest"):
        chain(Sig("a"), group(Sig("b")))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="at least one"):
        chain()
    with pytest.raises(ConfigError, match="no app"):
        chain(Sig("a")).submit()
    with pytest.raises(ConfigError, match="members are a group"):
        chord(chain(Sig("a")), Sig("b"))
    assert Sig("a", (1,)).set(queue="q", max_attempts=2).to_message() == {
        "task": "a", "args": [1], "kwargs": {}, "queue": "q", "max_attempts": 2}


def test_a_workflow_event_over_the_payload_cap_drops_the_steps_results_then_the_steps() -> None:
    import json

    from mqtt_tasks.coordinator.workflows import encode_event

    wf, _ = build(group(Sig("big", (i,)) for i in range(10)).to_message("g"))
    for i in range(10):
        ok(wf, f"g.{i}", "x" * 100)
    full = json.loads(encode_event(wf, "succeeded", "done", 1.0, True, 10_000))
    assert full["result"] == ["x" * 100] * 10 and full["steps"][0]["result"] == "x" * 100
    states = json.loads(encode_event(wf, "succeeded", "done", 1.0, True, 2_000))
    assert states["result"] == ["x" * 100] * 10 and [s["state"] for s in states["steps"]] == ["succeeded"] * 10
    assert "result" not in states["steps"][0]
    bare = json.loads(encode_event(wf, "succeeded", "done", 1.0, True, 1_100))
    assert "steps" not in bare and bare["result"] == ["x" * 100] * 10 and bare["final"] is True


def test_a_cancelled_chain_or_group_stops_its_running_steps_and_ends_cancelled() -> None:
    wf, _ = build(chain(Sig("a"), Sig("b"), Sig("c")).to_message("c"))
    ok(wf, "c.0", 1)
    effects = flow.cancel(wf, "no longer needed", 2.0)
    assert effects is not None
    assert [e.task_id for e in effects if isinstance(e, flow.Stop)] == ["c.1"]
    assert finals(effects) == ["cancelled"] and [s.state for s in wf.steps] == ["succeeded", "cancelled", "skipped"]
    assert flow.cancel(wf, "again", 3.0) is None  # finished
    assert ok(wf, "c.1", 2) is None  # a result that was on its way changes nothing
    members, _ = build(chord(group(Sig("a"), Sig("b")), Sig("t")).to_message("h"))
    ok(members, "h.0", 1)
    effects = flow.cancel(members, "stop", 2.0)
    assert effects is not None and [e.task_id for e in effects if isinstance(e, flow.Stop)] == ["h.1"]
    assert members.callback is not None and members.callback.state == "skipped"


def test_a_cancelled_saga_is_rolled_back_and_cannot_be_cancelled_while_compensating() -> None:
    wf, _ = saga3()
    ok(wf, "s.0", "ch-1")
    effects = flow.cancel(wf, "customer changed their mind", 2.0)
    assert effects is not None
    assert [e.task_id for e in effects if isinstance(e, flow.Stop)] == ["s.1"]
    assert submits(effects) == [("s.0.undo", ["ch-1"])] and wf.state == "compensating"
    assert "cancelled: customer changed their mind" in (wf.reason or "")
    assert flow.cancel(wf, "again", 3.0) is None
    assert finals(ok(wf, "s.0.undo", None)) == ["compensated"]
