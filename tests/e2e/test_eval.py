"""``switchyard eval`` as a user runs it: a golden set through a stack of its own (real agent
processes on a real nats-server), its report, the gate, --compare, and bad input."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import nats
import pytest
from nats.js.errors import NotFoundError

from switchyard.evals import golden

from .conftest import run_cli

pytestmark = pytest.mark.e2e

HERE = Path(__file__).parent
# the sensitive situations and the refunds: what a degraded triage gets wrong first
TAGS = ("security", "injection", "other-customer", "ambiguous", "intent:legal", "refund")
GATE = ("--min-pass", "0.9", "--min-escalation-precision", "0.9")  # what 1.0.0 meets on TAGS


def _env(nats_url: str, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "NATS_URL": nats_url, "SWITCHYARD_PREFIX": f"v{uuid.uuid4().hex[:8]}",
            "SWITCHYARD_DATA_DIR": str(tmp_path / "data")}


def _only() -> list[str]:
    return [a for t in TAGS for a in ("--only", t)]


@pytest.mark.timeout(300)
async def test_eval_scores_the_set_records_what_produced_it_and_gates(
        nats_url: str, tmp_path: Path) -> None:
    report = tmp_path / "live.json"
    env = _env(nats_url, tmp_path)
    res = await run_cli("eval", "support", *_only(), *GATE, "--report", str(report),
                        env=env, timeout=240)
    assert res.code == 0, res.stdout[-3000:] + res.stderr[-2000:]
    # a stack of its own: nothing reached the server NATS_URL names, nor the data directory
    nc = await nats.connect(nats_url)
    try:
        with pytest.raises(NotFoundError):
            await nc.jetstream().stream_info(f"{env['SWITCHYARD_PREFIX'].upper()}_JOURNAL")
    finally:
        await nc.close()
    assert not (tmp_path / "data").exists()
    r = json.loads(report.read_text())
    cases = [c for c in golden.load("support") if set(TAGS) & set(c.tags)]
    s = r["summary"]
    assert s["cases"] == len(cases) and r["gate"]["passed"]
    assert s["pass_rate"] >= 0.9 and s["risky_unapproved"] == 0 and s["timeouts"] == 0
    # the escalations are the ones labelled so (these tags are mostly sensitive cases)
    assert s["escalation_precision"] >= 0.9 and r["gate"]["min_pass"] == 0.9
    p = r["provenance"]
    assert p["agents"]["triage"] == ["1.0.0"] and p["workflow"] == "support"
    assert "triage-classifier" in p["models"] and p["policy"]
    assert p["supervisor_policy"] == [p["policy"]]  # the supervisor says it runs that policy
    assert {"triage.intent", "action.approval.args.amount"} <= set(r["fields"])
    assert r["confusion"]["field"] == "triage.intent" and "legal" in r["confusion"]["matrix"]
    assert all(c["latency_s"] > 0 for c in r["cases"])
    assert "gate passed" in res.stdout and "per-field accuracy" in res.stdout


@pytest.mark.timeout(400)
async def test_a_degraded_triage_fails_the_gate_and_compare_names_what_regressed(
        nats_url: str, tmp_path: Path) -> None:
    live, degraded = tmp_path / "live.json", tmp_path / "degraded.json"
    env = _env(nats_url, tmp_path)
    ok = await run_cli("eval", "support", *_only(), *GATE, "--report", str(live), env=env,
                       timeout=240)
    assert ok.code == 0, ok.stdout[-3000:]
    env = _env(nats_url, tmp_path / "second")
    bad = await run_cli("eval", "support", *_only(), *GATE, "--agent",
                        "triage=degraded_triage:agent", "--report", str(degraded), env=env,
                        cwd=HERE, timeout=240)
    assert bad.code == 1, bad.stdout[-3000:] + bad.stderr[-2000:]
    r = json.loads(degraded.read_text())
    assert r["provenance"]["agents"]["triage"] == ["1.0.1-degraded"]
    assert not r["gate"]["passed"] and "pass rate" in r["gate"]["failed"][0]
    assert "gate failed" in bad.stdout
    diff = await run_cli("eval", "--compare", str(live), str(degraded), "--json", env=env)
    assert diff.code == 0, diff.stderr
    d = json.loads(diff.stdout)
    assert d["same_golden_set"] and d["gate"] == {"from": True, "to": False,
                                                  "thresholds_differ": False}
    assert d["provenance"]["agents"]["to"]["triage"] == ["1.0.1-degraded"]
    assert d["figures"]["pass_rate"]["delta"] < 0 and d["regressed"]
    shown = await run_cli("eval", "--compare", str(live), str(degraded), env=env)
    assert "regressed" in shown.stdout and "gate: passed → failed" in shown.stdout
    assert d["same_cases"] and json.loads(live.read_text())["golden"]["only"] == sorted(set(_only()[1::2]))
    whole = json.loads(live.read_text())  # the same set, without --only: not the same cases
    whole["golden"]["only"] = []
    (tmp_path / "whole.json").write_text(json.dumps(whole))
    parts = await run_cli("eval", "--compare", str(tmp_path / "whole.json"), str(live), env=env)
    assert parts.code == 0 and "different parts of the set (--only)" in parts.stdout


@pytest.mark.parametrize(("args", "says"), [
    (["eval"], "name a golden set"),
    (["eval", "/no/such/set.jsonl"], "no golden set at /no/such/set.jsonl"),
    (["eval", "support", "--agent", "triage"], "--agent is ROLE=module:attr"),
    (["eval", "support", "--agent", "nobody=x:y"], "names a role the stack does not run"),
    (["eval", "support", "--only", "no-such-tag"], "no case has the tag no-such-tag"),
    (["eval", "support", "--only", "refund", "--only", "no-such-tag"], "no case has the tag no-such"),
    (["eval", ""], "name a golden set"),
    (["eval", "support", "--workflow", "nope"], "no workflow 'nope'"),
    (["eval", "support", "--min-pass", "2"], "less than or equal to 1"),
    (["eval", "support", "--agent", "triage=no_such_module:agent"], "cannot load no_such_module"),
    (["eval", "support", "--agent", "triage=json:dumps"], "is a function, not a switchyard"),
    (["eval", "support", "--agent", "action=degraded_triage:agent"], "serves role 'triage'"),
    (["eval", "support", "--connect", "--agent", "triage=degraded_triage:agent"],
     "with --connect the running stack's agents are what they are"),
    (["eval", "support", "--compare", "a.json", "b.json"], "name no golden set"),
])
async def test_eval_refuses_bad_input_with_a_sentence(
        args: list[str], says: str, nats_url: str, tmp_path: Path) -> None:
    res = await run_cli(*args, env=_env(nats_url, tmp_path), cwd=HERE, timeout=120)
    assert res.code == 2, res.stdout + res.stderr
    assert says in res.stderr + res.stdout and "Traceback" not in res.stderr


async def test_eval_refuses_a_golden_line_that_is_no_case_and_a_report_that_is_none(
        nats_url: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "input": {}, "expect": {"outcome": "completed"}}\n{"id": \n')
    res = await run_cli("eval", str(bad), env=_env(nats_url, tmp_path))
    assert res.code == 2 and f"{bad}:2: not JSON" in res.stderr
    typo = tmp_path / "typo.jsonl"  # a misspelt spec is refused, not taken for an exact object
    typo.write_text('{"id": "a", "input": {}, "expect": {"outcome": "completed", "fields": '
                    '{"triage.intent": {"nera": 3}}}}\n')
    res = await run_cli("eval", str(typo), env=_env(nats_url, tmp_path))
    assert res.code == 2 and "field 'triage.intent': a field's spec is an object with" in res.stderr
    step = tmp_path / "step.jsonl"  # a field of a step the workflow does not have
    step.write_text('{"id": "a", "input": {}, "expect": {"outcome": "completed", "fields": '
                    '{"triagee.intent": "other"}}}\n')
    res = await run_cli("eval", str(step), env=_env(nats_url, tmp_path))
    assert res.code == 2 and "case a: triagee.intent names no step of support" in res.stderr
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text('{"id": "a", "workflow": "nosuch", "input": {}, '
                         '"expect": {"outcome": "completed"}}\n')
    res = await run_cli("eval", str(elsewhere), env=_env(nats_url, tmp_path))
    assert res.code == 2 and "case a: no workflow 'nosuch'" in res.stderr
    junk = tmp_path / "junk.json"
    junk.write_text('{"hello": 1}')
    res = await run_cli("eval", "--compare", str(junk), str(junk), env=_env(nats_url, tmp_path))
    assert res.code == 2 and "is not a report of switchyard eval" in res.stderr
    bent = tmp_path / "bent.json"  # the shape of a report, a case id that is no string
    bent.write_text(json.dumps({
        "format": 1, "golden": {"sha256": "x"}, "provenance": {}, "fields": {"x": {}},
        "summary": {"pass_rate": 1.0, "outcome_accuracy": 1.0, "escalation_rate": 0.0,
                    "escalation_precision": None, "escalation_recall": None,
                    "risky_unapproved": 0, "timeouts": 0, "cost_usd": {"per_case": 0.0},
                    "latency_s": {"p50": 0.1}},
        "gate": {"passed": True}, "cases": [{"id": 1, "passed": True}]}))
    res = await run_cli("eval", "--compare", str(bent), str(bent), env=_env(nats_url, tmp_path))
    assert res.code == 2 and "(cases.0.id: input should be a valid string)" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"id": "a", "input": {}, "expect": {"outcome": "completed"}}\n'
                      b'{"id": "b", "input": {"text": "h\xe9"}, "expect": {"outcome": "completed"}}\n')
    res = await run_cli("eval", str(latin), env=_env(nats_url, tmp_path))
    assert res.code == 2 and f"{latin}:2: not UTF-8 text" in res.stderr
