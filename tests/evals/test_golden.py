"""The golden-set format, the scoring of each spec, and the shipped set: labelled, covering what
the issue asks, and kept apart from the classifier's training examples."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from importlib import resources
from pathlib import Path

import pytest
import yaml

from switchyard.evals import golden
from switchyard.evals.golden import Case
from switchyard.evals.score import Observed, ToolUse, score_case, score_field
from switchyard.protocol.errors import ConfigError

INTENTS = {"billing", "technical", "account", "legal", "other"}


def _write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "set.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = ('{"id": "c1", "input": {"text": "hi"}, "expect": {"outcome": "completed", '
        '"fields": {"triage.intent": "other"}}}')


@pytest.mark.parametrize(("line", "says"), [
    ("{not json", "not JSON"),
    ('{"id": "c1", "input": {}, "expect": {"outcome": "maybe"}}', "expect.outcome"),
    ('{"id": "c 1", "input": {}, "expect": {"outcome": "completed"}}', "id"),
    ('{"id": "c1", "input": {}, "expect": {"outcome": "completed", "escalation": "routed"}}',
     "an escalation kind goes with outcome 'escalated'"),
    ('{"id": "c1", "input": {}, "expect": {"outcome": "completed", "fields": {"intent": 1}}}',
     "<step>.<path>"),
    ('{"id": "c1", "input": {}, "expect": {"outcome": "completed", "fields": '
     '{"a.b": {"schema": {"type": "nonsense"}}}}}', "not a JSON Schema"),
    ('{"id": "c1", "input": {}, "expect": {"outcome": "completed", "fields": '
     '{"a.b": {"near": 1, "in": [1]}}}}', "one of"),
    ('{"id": "c1", "input": {}, "expect": {"outcome": "completed"}, "surprise": 1}', "surprise"),
])
def test_a_bad_line_is_refused_naming_it(tmp_path: Path, line: str, says: str) -> None:
    path = _write(tmp_path, GOOD, line)
    with pytest.raises(ConfigError) as exc:
        golden.load(path)
    assert f"{path}:2" in exc.value.message and says in exc.value.message


def test_duplicate_ids_missing_files_and_empty_sets_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="used twice"):
        golden.load(_write(tmp_path, GOOD, GOOD))
    with pytest.raises(ConfigError, match="no golden set at"):
        golden.load(tmp_path / "absent.jsonl")
    with pytest.raises(ConfigError, match="no cases"):
        golden.load(_write(tmp_path, ""))
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match=r"bin.jsonl:1: not UTF-8 text"):
        golden.load(tmp_path / "bin.jsonl")
    with pytest.raises(ConfigError, match="cannot read"):
        golden.load(tmp_path)  # a directory


@pytest.mark.parametrize(("spec", "value", "ok"), [
    ("billing", "billing", True),
    ("billing", "legal", False),
    (True, True, True),
    (True, 1, False),  # a boolean is not a number
    ({"in": ["low", "normal"]}, "normal", True),
    ({"in": ["low", "normal"]}, "high", False),
    ({"near": 1250.0, "tol": 0.01}, 1250.004, True),
    ({"near": 1250.0, "tol": 0.01}, 1.25, False),
    ({"near": 10, "tol": 1}, "10", False),
    ({"near": 10, "tol": 1}, float("nan"), False),
    ({"overlap": ["a", "b"], "min": 0.5}, ["a", "c"], False),  # 1/3
    ({"overlap": ["a", "b"], "min": 0.5}, ["a", "b", "c"], True),  # 2/3
    ({"overlap": ["a"]}, "a", False),
    ({"schema": {"type": "string", "not": {"pattern": "4111"}}}, "Hello Ada", True),
    ({"schema": {"type": "string", "not": {"pattern": "4111"}}}, "card 4111 1111", False),
])
def test_each_spec_scores(spec: object, value: object, ok: bool) -> None:
    assert score_field("x.y", golden.parse_spec(spec), value).ok is ok


def test_a_case_passes_on_its_outcome_its_fields_and_no_unapproved_risky_call() -> None:
    case = Case.model_validate({
        "id": "c1", "input": {"text": "refund 250 EUR"},
        "expect": {"outcome": "escalated", "escalation": "approval",
                   "fields": {"action.approval.args.amount": {"near": 250, "tol": 0.01}}}})
    held = Observed("w1", "escalated", kind="approval",
                    steps={"action": {"approval": {"args": {"amount": 250.0}}}})
    assert score_case(case, held).passed
    wrong_kind = Observed("w1", "escalated", kind="routed", steps=held.steps)
    assert score_case(case, wrong_kind).failures[0].startswith("outcome: expected escalated")
    missing = score_case(case, Observed("w1", "escalated", kind="approval"))
    assert missing.failures == ["action.approval.args.amount: missing"]
    # the refund ran with no one's approval: a risky action, labelled to wait for a person, even
    # though the policy's rule did not hold for the arguments it was given
    ran = Observed("w1", "escalated", kind="approval", steps=held.steps, calls=[
        ToolUse("propose_refund", {"amount": 2.5}, ok=True, gated=True, side_effect=True)])
    assert not score_case(case, ran).passed and len(score_case(case, ran).risky) == 1


def _words(text: str) -> set[str]:
    return set(re.findall(r"[^\W\d_]+", text.lower()))


SHIPPED = ("support", "support-2", "support-3", "support-4", "support-5")


def _shipped(name: str = "support") -> list[Case]:
    return golden.load(name)


@pytest.mark.parametrize("name", SHIPPED)
def test_the_shipped_sets_are_kept_apart_from_the_training_examples(name: str) -> None:
    """No golden ticket is a training example (nor the demo's), nor close to one: word sets
    overlap by less than 0.7 (Jaccard)."""
    rows = csv.DictReader(resources.files("switchyard.agents").joinpath(
        "data", "tickets.csv").read_text().splitlines())
    training = [r["text"] for r in rows]
    samples = [t["text"] for t in yaml.safe_load(resources.files("switchyard").joinpath(
        "data", "sample_tickets.yaml").read_text())]
    known = [(_words(t), " ".join(t.lower().split())) for t in training + samples]
    for case in _shipped(name):
        text = case.input["text"]
        mine, normal = _words(text), " ".join(text.lower().split())
        for theirs, other in known:
            assert normal != other, f"{case.id} is a training example"
            if mine | theirs:
                j = len(mine & theirs) / len(mine | theirs)
                assert j < 0.7, f"{case.id} is close to a training example ({j:.2f}): {other!r}"


def test_the_shipped_set_covers_what_the_support_workflow_meets() -> None:
    cases = _shipped()
    tags = Counter(t for c in cases for t in c.tags)
    assert len(cases) >= 150
    intents = {c.expect.fields["triage.intent"] for c in cases
               if isinstance(c.expect.fields.get("triage.intent"), str)}
    assert intents == INTENTS
    assert {"severity:low", "severity:normal", "severity:high"} <= set(tags)
    for kind in ("pii:email", "pii:phone", "pii:card", "pii:iban", "injection", "other-customer",
                 "security", "ambiguous", "off-topic", "markup"):
        assert tags[kind] >= 3, kind
    assert len({t for t in tags if t.startswith("lang:")}) >= 5
    assert len({t for t in tags if t.startswith("currency:")}) >= 3
    texts = " ".join(c.input["text"] for c in cases)
    for amount in ("$1,250.00", "3.400 €", "GBP 180"):
        assert amount in texts
    kinds = Counter(k for c in cases for k in c.expect.kinds)
    assert {"routed", "approval", "low_confidence"} <= set(kinds)
    escalated = sum(c.expect.outcome == "escalated" for c in cases)
    assert escalated / len(cases) <= 0.2, "labelled escalations alone would break the gate"


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_case_is_one_json_object_per_line(name: str) -> None:
    text = resources.files("switchyard").joinpath("data", "golden", f"{name}.jsonl").read_text()
    for n, line in enumerate(text.splitlines(), 1):
        assert isinstance(json.loads(line), dict), n


@pytest.mark.parametrize("name", SHIPPED[1:])
def test_the_later_sets_are_labelled_as_the_first_is(name: str) -> None:
    """The sets written after the first, from the label guide alone: every intent, every
    escalation kind, a share labelled for a person the gate allows."""
    cases = _shipped(name)
    assert len(cases) >= 100
    assert len({c.id for c in cases} & {c.id for c in _shipped()}) == 0
    intents = {c.expect.fields["triage.intent"] for c in cases
               if isinstance(c.expect.fields.get("triage.intent"), str)}
    assert intents == INTENTS
    kinds = Counter(k for c in cases for k in c.expect.kinds)
    assert {"routed", "approval", "low_confidence"} <= set(kinds)
    assert sum(c.expect.outcome == "escalated" for c in cases) / len(cases) <= 0.3


def test_latency_percentiles_interpolate_between_cases() -> None:
    """p95 of five cases is between the fourth and the fifth, not the slowest one."""
    from switchyard.evals.report import summarize

    case = golden.parse(GOOD + "\n", "t.jsonl")[0]
    scores = [score_case(case, Observed("w", "completed", latency_s=x))
              for x in (0.1, 0.2, 0.3, 0.4, 5.0)]
    latency = summarize(scores)["latency_s"]
    assert (latency["p50"], latency["p95"], latency["max"]) == (0.3, 4.08, 5.0)
    assert summarize(scores[:1])["latency_s"]["p95"] == 0.1


def test_a_set_is_named_or_a_path(tmp_path: Path) -> None:
    """load("support") is the shipped set; any other string is a file, as on the command line."""
    path = _write(tmp_path, GOOD)
    assert [c.id for c in golden.load(str(path))] == ["c1"]
    assert len(golden.load("support")) == len(_shipped())
    with pytest.raises(ConfigError, match="no golden set at"):
        golden.load(str(tmp_path / "missing.jsonl"))
