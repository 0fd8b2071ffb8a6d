"""Commands that need no running stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CLI = str(Path(sys.executable).parent / "switchyard")


def test_cli_protocol_schema_writes_json_schema_and_asyncapi(tmp_path: Path) -> None:
    res = subprocess.run([CLI, "protocol", "schema", "--out", str(tmp_path / "schema")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    files = sorted(p.name for p in (tmp_path / "schema").iterdir())
    assert "asyncapi.json" in files and "Task.schema.json" in files and len(files) == 12
    task = json.loads((tmp_path / "schema" / "Task.schema.json").read_text())
    assert task["title"] == "Task" and "grant" in json.dumps(task)
    doc = json.loads((tmp_path / "schema" / "asyncapi.json").read_text())
    assert doc["channels"]["task"]["address"] == "sy.task.{role}"


def test_cli_workflow_put_rejects_an_invalid_file_before_touching_the_bus(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsteps: [{name: a, role: r, routes: [{when: 'true', to: nowhere}]}]\n")
    env = {**os.environ, "NATS_URL": "nats://127.0.0.1:1"}  # nothing there, and not needed
    res = subprocess.run([CLI, "workflow", "put", str(bad)], capture_output=True, text=True,
                         timeout=60, env=env)
    assert res.returncode == 1
    assert "route target 'nowhere' is unknown" in res.stderr


def test_cli_bad_settings_are_named_not_a_traceback() -> None:
    for var, value, said in (("SWITCHYARD_PREFIX", "Not.Valid", "SWITCHYARD_PREFIX"),
                             ("SWITCHYARD_CONCURRENCY", "many", "SWITCHYARD_CONCURRENCY")):
        env = {**os.environ, var: value, "NATS_URL": "nats://127.0.0.1:1"}
        res = subprocess.run([CLI, "status"], capture_output=True, text=True, timeout=60, env=env)
        assert res.returncode == 2, res.stderr
        assert said in res.stderr and "Traceback" not in res.stderr


def test_cli_workflow_put_checks_the_workflow_against_the_policy(tmp_path: Path) -> None:
    greedy = tmp_path / "greedy.yaml"
    greedy.write_text("name: greedy\nsteps: [{name: s, role: kbuser, tools: [kb_search]}]\n")
    env = {**os.environ, "NATS_URL": "nats://127.0.0.1:1"}  # refused before touching the bus
    res = subprocess.run([CLI, "workflow", "put", str(greedy)], capture_output=True, text=True,
                         timeout=60, env=env)
    assert res.returncode == 1, res.stderr
    assert "asks for more than the policy allows" in res.stderr and "Traceback" not in res.stderr
