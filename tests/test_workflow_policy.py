"""The workflow policy (``mqtt_tasks.flow``) as pure functions: no broker, no clock."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest

from mqtt_tasks import canvas as flow_canvas
from mqtt_tasks import flow
from mqtt_tasks.canvas import Signature as Sig
from mqtt_tasks.canvas import chain, chord, group, saga, step
from mqtt_tasks.errors import ConfigError
from mqtt_tasks.protocol import codec
from mqtt_tasks.protocol.messages import Workflow
from mqtt_tasks.store.workflows import WorkflowRecord, WorkflowStep

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
    with pytest.raises(ConfigError, match="sagas do not nest"):
        chain(Sig("a"), saga(Sig("b")))
    with pytest.raises(ConfigError, match="do not nest in a saga"):
        saga(Sig("a"), group(Sig("b")))  # type: ignore[arg-type]
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


# -- nesting ------------------------------------------------------------------------------------
def test_a_group_inside_a_chain_hands_the_next_step_the_list_of_its_results() -> None:
    wf, effects = build(chain(Sig("a", (1,)), group(Sig("b"), chain(Sig("c"), Sig("d"))), Sig("e")).to_message("w"))
    assert submits(effects) == [("w.0", [1])]
    assert submits(ok(wf, "w.0", 5)) == [("w.1.0", [5]), ("w.1.1.0", [5])]  # each member gets the result
    assert submits(ok(wf, "w.1.1.0", 6)) == [("w.1.1.1", [6])]
    assert ok(wf, "w.1.0", 7) == []  # the nested chain still runs
    assert submits(ok(wf, "w.1.1.1", 8)) == [("w.2", [[7, 8]])]  # the group's result: each member's last
    assert finals(ok(wf, "w.2", 9)) == ["succeeded"] and wf.result == 9
    views = flow.step_views(wf)
    assert views[1]["kind"] == "group" and views[1]["state"] == "succeeded"
    assert [v["id"] for v in views[1]["steps"][1]["steps"]] == ["w.1.1.0", "w.1.1.1"]
    assert views[1]["steps"][1]["steps"][1]["result"] == 8


def test_a_failure_deep_inside_fails_each_enclosing_workflow_after_its_siblings_end() -> None:
    wf, _ = build(chain(Sig("a"), group(chain(Sig("b"), Sig("c")), Sig("d")), Sig("e")).to_message("w"))
    ok(wf, "w.0", 1)
    assert dead(wf, "w.1.0.0") == []  # its chain ends dead (c skipped); the group waits for d
    nested = wf.steps[1]
    assert nested.steps[0].state == "dead" and nested.steps[0].steps[1].state == "skipped"
    assert nested.state == "running" and wf.state == "running"
    assert finals(ok(wf, "w.1.1", 2)) == ["dead"]
    assert [s.state for s in wf.steps] == ["succeeded", "dead", "skipped"]
    assert wf.failed_step == 1 and wf.error == ERR
    assert (wf.reason or "").startswith("step 1 (group) 1 of 2 members failed, first step 1.0 (chain) "
                                        "step 1.0.0 (b) dead: RuntimeError: no")


def test_a_chord_of_chains_calls_back_with_each_chains_last_result() -> None:
    wf, effects = build(chord([chain(Sig("a"), Sig("b")), chain(Sig("c"), Sig("d"))], Sig("t")).to_message("h"))
    assert submits(effects) == [("h.0.0", []), ("h.1.0", [])]
    assert submits(ok(wf, "h.1.0", 1)) == [("h.1.1", [1])]
    assert submits(ok(wf, "h.0.0", 2)) == [("h.0.1", [2])]
    assert ok(wf, "h.0.1", 3) == []
    assert submits(ok(wf, "h.1.1", 4)) == [("h.callback", [[3, 4]])]
    assert finals(ok(wf, "h.callback", 7)) == ["succeeded"] and wf.result == 7
    nested_callback, _ = build(chain(Sig("a"), chord([Sig("b")], Sig("t"))).to_message("n"))
    ok(nested_callback, "n.0", 1)
    assert submits(ok(nested_callback, "n.1.0", 2)) == [("n.1.callback", [[2]])]
    assert finals(dead(nested_callback, "n.1.callback")) == ["dead"]
    assert "step 1.callback (t) dead" in (nested_callback.reason or "")


def test_cancelling_a_nested_workflow_stops_what_runs_and_skips_what_has_not() -> None:
    wf, _ = build(chain(Sig("a"), group(chain(Sig("b"), Sig("c")), Sig("d")), Sig("e")).to_message("w"))
    ok(wf, "w.0", 1)
    ok(wf, "w.1.1", 2)
    effects = flow.cancel(wf, "stop", 2.0)
    assert effects is not None and [e.task_id for e in effects if isinstance(e, flow.Stop)] == ["w.1.0.0"]
    assert finals(effects) == ["cancelled"]
    states = {s.id: s.state for s in wf.walk()}
    assert states == {"w.0": "succeeded", "w.1": "cancelled", "w.1.0": "cancelled", "w.1.0.0": "cancelled",
                      "w.1.0.1": "skipped", "w.1.1": "succeeded", "w.2": "skipped"}
    assert ok(wf, "w.1.0.0", 3) is None


def test_cancelling_one_nested_workflow_fails_its_parent_as_a_failed_step() -> None:
    wf, _ = build(chain(Sig("a"), group(chain(Sig("b"), Sig("c")), Sig("d")), Sig("e")).to_message("w"))
    assert flow.cancel_nested(wf, "w.1", "not yet", 1.0) is None  # pending: nothing to cancel
    ok(wf, "w.0", 1)
    ok(wf, "w.1.1", 2)
    assert flow.cancel_nested(wf, "w.1.1", "x", 1.0) is None  # a task, and ended: not a running nested workflow
    effects = flow.cancel_nested(wf, "w.1.0", "changed plans", 2.0)
    assert effects is not None and [e.task_id for e in effects if isinstance(e, flow.Stop)] == ["w.1.0.0"]
    assert finals(effects) == ["dead"]  # the group failed (its other member had ended), so the chain
    assert {s.id: s.state for s in wf.walk()} == {
        "w.0": "succeeded", "w.1": "dead", "w.1.0": "cancelled", "w.1.0.0": "cancelled", "w.1.0.1": "skipped",
        "w.1.1": "succeeded", "w.2": "skipped"}
    assert "step 1.0 (chain) cancelled: changed plans" in (wf.reason or "")
    assert flow.cancel_nested(wf, "w.1.0", "again", 3.0) is None


def test_a_nested_record_survives_the_store_and_goes_on() -> None:
    wf, _ = build(group(chain(Sig("a"), Sig("b")), Sig("c")).to_message("g"))
    ok(wf, "g.0.0", 1)
    again = WorkflowRecord.from_dict(json.loads(json.dumps(wf.to_dict())))
    assert again == wf
    ok(again, "g.1", 2)
    assert finals(ok(again, "g.0.1", 3)) == ["succeeded"] and again.result == [3, 2]


def test_a_step_id_that_is_not_a_path_of_the_workflow_changes_nothing() -> None:
    wf, _ = build(chain(group(Sig("a"), Sig("b")), Sig("c")).to_message("w"))
    for stranger in ("w.1", "w.0", "w.0.2", "w.0.01", "w.x", "w.0.callback", "w", "other.0.0", "w.0.0.0", "w.0.\u0661"):
        assert ok(wf, stranger, 1) is None, stranger
    assert [s.state for s in wf.walk()] == ["running", "running", "running", "pending"]


def nested_chains(levels: int) -> dict[str, Any]:
    step: dict[str, Any] = {"task": "a"}
    for _ in range(levels):
        step = {"kind": "chain", "steps": [step]}
    return step


@pytest.mark.parametrize(("message", "why"), [
    ({"id": "x", "kind": "saga", "steps": [{"kind": "group", "steps": [{"task": "a"}]}]}, "do not nest inside a saga"),
    ({"id": "x", "kind": "chain", "steps": [{"kind": "saga", "steps": [{"task": "a"}]}]}, "'chain', 'group' or"),
    ({"id": "x", "kind": "chain", "steps": [{"kind": "chord", "steps": [{"task": "a"}]}]}, "needs a callback"),
    ({"id": "x", "kind": "chain", "steps": [{"kind": "group", "steps": []}]}, "at least 1"),
    ({"id": "x", "kind": "chain", "steps": [{"kind": "group", "steps": [{"task": "a", "compensate": {"task": "b"}}]}]},
     "only a saga"),
    ({"id": "x", "kind": "group", "steps": [{"kind": "group", "steps": [{"task": "a"}] * 600}] * 2},
     "1200 tasks in the steps: at most 1000"),
    ({"id": "x", "kind": "chain", "steps": [nested_chains(5)]}, "nested 5 deep: at most 4"),
])
def test_bad_nested_workflows_do_not_decode(message: dict[str, Any], why: str) -> None:
    from mqtt_tasks.errors import DecodeError

    with pytest.raises(DecodeError, match=why):
        codec.decode(Workflow, codec.encode(message))


def test_the_nested_example_in_the_protocol_docs_decodes() -> None:
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    example = re.search(r"-m '(\{\"id\":\"album-3\".*?)'\n", doc, re.S)
    assert example is not None
    wf, effects = build(json.loads(example.group(1)))
    assert submits(effects) == [("album-3.0", ["album-3"])] and wf.steps[1].kind == "group"
    ok(wf, "album-3.0", ["p1"])
    assert submits(ok(wf, "album-3.1.0.0", "r")) == [("album-3.1.0.1", ["r"])]


def test_every_step_id_fits_a_task_id_within_the_caps() -> None:
    """The longest path: a callback or an index below 1,000 at each level of nesting."""
    from mqtt_tasks.protocol.messages import MAX_WORKFLOW_DEPTH, MAX_WORKFLOW_STEPS

    longest = len(f".{MAX_WORKFLOW_STEPS - 1}") * (MAX_WORKFLOW_DEPTH + 1) + len(".callback") - len(".999")
    assert 100 + max(longest, len(f".{MAX_WORKFLOW_STEPS - 1}.undo")) <= 128
    deep = {"id": "x" * 100, "kind": "chord", "steps": [nested_chains(4)], "callback": {"task": "t"}}
    record, _ = build(deep)
    assert max(len(s.id) for s in record.walk()) <= 128


# -- property: random trees ---------------------------------------------------------------------
def random_tree(rng: random.Random, depth: int, counter: list[int]) -> Any:
    if depth == 0 or rng.random() < 0.35:
        counter[0] += 1
        return Sig(f"t{counter[0]}", (counter[0],), immutable=rng.random() < 0.2)
    members = [random_tree(rng, depth - 1, counter) for _ in range(rng.randint(1, 3))]
    kind = rng.choice(["chain", "group", "chord"])
    if kind == "chord":
        counter[0] += 1
        return chord(members, Sig(f"t{counter[0]}", (counter[0],)))
    return chain(*members) if kind == "chain" else group(*members)


def expected(node: Any, before: list[Any], fails: set[str]) -> tuple[bool, Any, set[str]]:
    """What the tree should do, evaluated directly: (succeeded, result, the tasks that run)."""
    if node.kind is None:
        args = list(node.sig.get("args", [])) if node.sig.get("immutable") else before + list(node.sig.get("args", []))
        return node.id not in fails, [node.id, args], {node.id}
    ran: set[str] = set()
    if node.kind == "chain":
        result: Any = None
        for child in node.steps:
            good, result, more = expected(child, before, fails)
            ran |= more
            if not good:
                return False, None, ran
            before = [result]
        return True, result, ran
    outcomes = [expected(child, before, fails) for child in node.steps]
    ran = set().union(*(more for _g, _r, more in outcomes))
    if not all(good for good, _r, _m in outcomes):
        return False, None, ran
    results = [r for _g, r, _m in outcomes]
    if node.callback is None:
        return True, results, ran
    good, result, more = expected(node.callback, [results], fails)
    return good, result, ran | more


@pytest.mark.parametrize("seed", range(200))
def test_random_nested_trees_run_each_task_once_in_order(seed: int) -> None:
    rng = random.Random(seed)
    counter = [0]
    tree = random_tree(rng, 4, counter)
    shape = tree if isinstance(tree, flow_canvas.Workflow) else chain(tree)
    wf, effects = build(shape.to_message("r"))
    leaves = [s.id for s in wf.walk() if s.kind is None]
    fails = {leaf for leaf in leaves if rng.random() < 0.1}
    root = WorkflowStep(id=wf.id, sig={}, kind=wf.kind, steps=copy.deepcopy(wf.steps),
                        callback=copy.deepcopy(wf.callback))
    good, result, should_run = expected(root, [], fails)
    running = dict(submits(effects))
    submitted = list(running)
    final: list[str] = []
    while not final:
        assert running, "the workflow waits for nothing and has not ended"
        task_id = rng.choice(sorted(running))
        args = running.pop(task_id)
        if rng.random() < 0.2:  # a coordinator restart in between: the record from the store
            wf = WorkflowRecord.from_dict(json.loads(json.dumps(wf.to_dict())))
        out = dead(wf, task_id) if task_id in fails else ok(wf, task_id, [task_id, args])
        assert ok(wf, task_id, "again") is None  # a duplicate changes nothing
        new = submits(out)
        assert not set(dict(new)) & set(submitted), "a task submitted twice"
        running.update(new)
        submitted += [t for t, _a in new]
        final = finals(out)
    assert not running, "the workflow ended with tasks still running"
    assert set(submitted) == should_run
    assert final == ["succeeded" if good else "dead"]
    if good:
        assert wf.result == result
    assert all(s.state != "running" and s.state != "pending" for s in wf.walk())
