"""docs/protocol.md and the models agree: every documented field exists and vice versa."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mqtt_tasks.protocol.deploys import Bundle, DeployReport, Manifest
from mqtt_tasks.protocol.messages import (
    CoordinatorPresence,
    ErrorReport,
    Receipt,
    Schedule,
    StatusEvent,
    Task,
    WorkerState,
    Workflow,
)
from mqtt_tasks.protocol.schema import json_schemas

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def documented_fields(section: str) -> set[str]:
    """Field names in the first column of the first table under '## {section}'."""
    text = DOC.read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in body.splitlines():
        if not line.startswith("| `"):
            continue
        first_cell = line.split("|")[1]
        names.update(re.findall(r"`([a-z_][a-z0-9_]*)`", first_cell))
    return names


@pytest.mark.parametrize(
    ("section", "model"),
    [("Task", Task), ("Status event", StatusEvent), ("Worker state", WorkerState), ("Error report", ErrorReport),
     ("Coordinator presence", CoordinatorPresence), ("Receipt", Receipt), ("Schedules", Schedule),
     ("Workflow", Workflow), ("Deploy bundle", Bundle), ("Bundle manifest", Manifest),
     ("Deploy report", DeployReport)],
)
def test_documented_fields_match_the_model(section: str, model: type) -> None:
    assert documented_fields(section) == set(model.model_fields)


def test_required_task_fields_are_the_contracts() -> None:
    schema = json_schemas()["task"]
    assert sorted(schema["required"]) == ["id", "task"]
    assert schema["properties"]["id"]["pattern"] == r"^[A-Za-z0-9_.:\-]{1,128}$"


def test_every_schema_is_a_json_object_schema() -> None:
    schemas = json_schemas()
    assert set(schemas) == {"task", "status", "worker", "error", "presence", "receipt", "cancel", "schedule",
                            "workflow", "bundle", "deploy_report"}
    for schema in schemas.values():
        assert schema["type"] == "object"
        assert schema["$schema"].endswith("2020-12/schema")


def test_schema_command_prints_the_generated_schemas() -> None:
    import json

    from click.testing import CliRunner

    from mqtt_tasks.cli import cli

    result = CliRunner().invoke(cli, ["schema"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == json.loads(json.dumps(json_schemas()))
    one = CliRunner().invoke(cli, ["schema", "task"])
    assert json.loads(one.output)["required"] == ["id", "task"]
    bad = CliRunner().invoke(cli, ["schema", "nope"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output


def test_the_rpc_topics_and_the_ops_each_takes_are_documented() -> None:
    """protocol.md's topic table lists the three rpc topics; the read-only one names every op it takes."""
    from mqtt_tasks.protocol.rpc import READ_ONLY_OPS

    text = DOC.read_text()
    for topic in ("P/rpc/query", "P/rpc/deploy", "P/rpc/coordinator", "P/replies/{username}/{unique}"):
        assert f"\n| `{topic}` |" in text, topic
    row = next(line for line in text.splitlines() if line.startswith("| `P/rpc/query` |"))
    assert [op for op in READ_ONLY_OPS if f"`{op}`" not in row] == []
    section = text.split("\n## The rpc topics\n", 1)[1].split("\n## ", 1)[0]
    assert all(f"`{op}`" in section for op in READ_ONLY_OPS)


def test_the_task_list_query_is_documented_field_by_field() -> None:
    """docs/protocol.md "Task list": its request table names the fields the query reads, its answer
    table the fields of the answer, and the summary's fields are ``record_summary``'s."""
    from mqtt_tasks.coordinator import record_summary
    from mqtt_tasks.store import TaskRecord
    from mqtt_tasks.store.listing import ANSWER_FIELDS, QUERY_FIELDS

    body = DOC.read_text().split("\n## Task list\n", 1)[1].split("\n## ", 1)[0]
    tables = [[line.split("|")[1:-1] for line in block.splitlines() if line.startswith("| `")]
              for block in re.findall(r"(?:^\|.*\n)+", body, re.M)]
    request, answer = ({re.findall(r"`([a-z_]+)`", row[0])[0] for row in table} for table in tables)
    assert request == set(QUERY_FIELDS) and answer == set(ANSWER_FIELDS)
    (tasks_row,) = [row for row in tables[1] if row[0].strip() == "`tasks`"]
    assert set(re.findall(r"`([a-z_]+)`", tasks_row[2])) == set(record_summary(TaskRecord("x")))
