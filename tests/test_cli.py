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
    assert "asyncapi.json" in files and "Task.schema.json" in files and len(files) == 14
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


def test_cli_a_key_file_that_is_missing_or_no_seed_is_named_not_a_traceback(tmp_path: Path) -> None:
    garbage = tmp_path / "console.nk"
    garbage.write_text("garbage\n")
    for path, said in ((tmp_path / "absent.nk", "No such file or directory"),
                       (garbage, "holds no nkey seed")):
        env = {**os.environ, "SWITCHYARD_NKEY_FILE": str(path), "NATS_URL": "nats://127.0.0.1:1"}
        res = subprocess.run([CLI, "status"], capture_output=True, text=True, timeout=60, env=env)
        assert res.returncode == 2, res.stderr
        assert "SWITCHYARD_NKEY_FILE" in res.stderr and said in res.stderr
        assert "Traceback" not in res.stderr and str(path) in res.stderr


def test_cli_a_bad_setting_names_the_value_given_on_one_line() -> None:
    env = {**os.environ, "SWITCHYARD_ACK_WAIT": "abc", "NATS_URL": "nats://127.0.0.1:1"}
    res = subprocess.run([CLI, "status"], capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 2
    [line] = res.stderr.splitlines()  # a container's log gets it whole, not wrapped at 80
    assert line.startswith("SWITCHYARD_ACK_WAIT:") and "(given: 'abc')" in line


def test_cli_demo_connect_with_nothing_there_says_so_at_once() -> None:
    env = {**os.environ, "NATS_URL": "nats://127.0.0.1:1"}
    res = subprocess.run([CLI, "demo", "--connect", "--json"], capture_output=True, text=True,
                         timeout=30, env=env)
    assert res.returncode == 2
    assert "no NATS server answers at nats://127.0.0.1:1" in res.stderr, res.stderr


def test_cli_nats_config_refuses_a_directory_where_its_config_goes(tmp_path: Path) -> None:
    (tmp_path / "auth.conf").mkdir()  # what a bind mount of a missing file leaves
    res = subprocess.run([CLI, "nats-config", "--out", str(tmp_path)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 1 and "is a directory, not a config file" in res.stderr
    assert not (tmp_path / "creds").exists() and not (tmp_path / "nats.conf").exists()


def test_cli_model_options_and_settings_that_cannot_work_are_refused_at_once(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "NATS_URL": "nats://127.0.0.1:1"}
    env.pop("SWITCHYARD_MODEL_BASE_URL", None)
    bad_catalogue = tmp_path / "models.yaml"
    bad_catalogue.write_text("models:\n  - name: big\n    base_url: ftp://x\n")
    wants_gpt = tmp_path / "wf.yaml"
    wants_gpt.write_text("name: w\nsteps: [{name: s, role: r, model: {use: gpt}}]\n")
    for args, extra, said in (
        (["demo", "--models", "gpt"], {}, "--models is 'reference' or 'llm'"),
        (["demo", "--base-url", "http://127.0.0.1:1/v1"], {}, "go with --models llm"),
        (["demo", "--models", "llm"], {}, "--models llm needs an endpoint"),
        (["demo", "--models", "llm", "--connect"], {}, "with --connect"),
        (["agent", "run", "triage"], {"SWITCHYARD_AGENTS": "llm"}, "which the catalogue lacks"),
        (["status"], {"SWITCHYARD_AGENTS": "robots"}, "SWITCHYARD_AGENTS"),
        (["supervisor", "run"], {"SWITCHYARD_MODEL_CATALOGUE": str(bad_catalogue)},
         "is not an http(s) URL"),
        (["supervisor", "run"], {"SWITCHYARD_WORKFLOWS": str(wants_gpt)},
         "names models the catalogue lacks: ['gpt']"),
        (["supervisor", "run"], {"SWITCHYARD_MODEL_CATALOGUE": str(tmp_path / "none.yaml")},
         "cannot read the model catalogue"),
        (["workflow", "put", str(wants_gpt)], {}, "names models the catalogue lacks: ['gpt']"),
        (["demo", "--models", "llm", "--base-url", "notaurl"], {}, "is not an http(s) URL"),
        (["demo", "--models", "llm", "--base-url", "http://127.0.0.1:1/v1"], {},
         "nothing answers at http://127.0.0.1:1/v1"),
        (["status"], {"SWITCHYARD_MODEL_BASE_URL": "notaurl"}, "SWITCHYARD_MODEL_BASE_URL"),
        (["agent", "run", "triage"], {"NATS_URL": "nats://127.0.0.1:99999"}, "is not a NATS URL"),
        (["eval", "shadow"], {"NATS_URL": "nats://127.0.0.1:port"}, "is not a NATS URL"),
    ):
        res = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=60,
                             env={**env, **extra})
        assert res.returncode == (1 if args[0] == "workflow" else 2), (args, res.stderr)
        assert said in " ".join(res.stderr.split()) and "Traceback" not in res.stderr, (
            args, res.stderr)
