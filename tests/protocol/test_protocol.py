from __future__ import annotations

import json

import msgspec
import pytest

import switchyard.protocol as protocol
from switchyard.protocol import (
    Decision,
    DecodeError,
    Entry,
    Escalation,
    Event,
    MessageTooLargeError,
    Outcome,
    Partial,
    Result,
    Subjects,
    Task,
    ToolCall,
    ToolResult,
    UnsupportedVersionError,
    WorkflowRequest,
    decode,
    encode,
    grants,
)
from switchyard.protocol.errors import ConfigError, ErrorCode, SwitchyardError
from switchyard.protocol.messages import Notice, ShadowCall, ShadowResult, TimerFired
from switchyard.protocol.schema import asyncapi, message_schemas

NOW = 1_800_000_000.0
SAMPLES: list[msgspec.Struct] = [
    WorkflowRequest(id="w1", workflow="support", input={"text": "hi"}, submitted_at=NOW),
    Task(id="w1:triage:1", workflow_id="w1", workflow="support", step="triage", role="triage",
         attempt=1, input={"text": "hi"}, context={"steps": {}}, grant="g", deadline=NOW),
    Result(task_id="w1:triage:1", workflow_id="w1", step="triage", role="triage", attempt=1,
           status="ok", output={"intent": "billing"}, confidence=0.8),
    ToolCall(tool="kb_search", args={"query": "x"}, grant="g", task_id="t", workflow_id="w1"),
    ToolResult(ok=True, result={"hits": []}),
    Escalation(id="e1", workflow_id="w1", workflow="support", step="triage", kind="routed",
               reason="legal", created_at=NOW, deadline=NOW + 1),
    Decision(escalation_id="e1", workflow_id="w1", action="approve", reviewer="ann",
             decided_at=NOW),
    Event(workflow_id="w1", at=NOW, source="supervisor",
          entries=[Entry(type="workflow.submitted", data={"workflow": "support"})]),
    Outcome(workflow_id="w1", workflow="support", status="completed", started_at=NOW,
            finished_at=NOW),
    TimerFired(workflow_id="w1", kind="timeout", step="triage", attempt=1, after=3, prev="ab"),
    Notice(workflow_id="w1", kind="task_dead_lettered", reason="delivered 5 times",
           step="triage", attempt=1, after=4, prev="cd"),
    Partial(workflow_id="w1", task_id="w1:triage:1", step="triage", seq=1, text="{\"int"),
    ShadowResult(task_id="w1:action:1", workflow_id="w1", step="action", role="action", attempt=1,
                 version="1.1.0", status="ok", output={"reply": "Hello"},
                 calls=[ShadowCall(tool="propose_refund", args={"amount": 250}, ok=True,
                                   needs_approval=True)]),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_codec_round_trips_every_message(message: msgspec.Struct) -> None:
    data = encode(message)
    assert json.loads(data)["protocol"] == "2.0"
    assert decode(data, type(message)) == message


def test_codec_rejects_malformed_json_with_a_sentence() -> None:
    with pytest.raises(DecodeError, match="cannot decode Task"):
        decode(b"{not json", Task)


def test_codec_rejects_wrong_schema() -> None:
    with pytest.raises(DecodeError) as exc:
        decode(b'{"protocol": "2.0", "id": 5}', Task)
    assert exc.value.code == ErrorCode.DECODE_ERROR


def test_codec_rejects_unknown_major_version_even_when_schema_differs() -> None:
    with pytest.raises(UnsupportedVersionError, match=r"'3.0' is not supported"):
        decode(b'{"protocol": "3.0", "whatever": true}', Task)
    data = encode(SAMPLES[1]).replace(b'"2.0"', b'"3.1"')
    with pytest.raises(UnsupportedVersionError) as exc:
        decode(data, Task)
    assert exc.value.code == "unsupported_version"


def test_codec_accepts_a_newer_minor_version() -> None:
    data = encode(SAMPLES[1]).replace(b'"2.0"', b'"2.7"')
    assert decode(data, Task).protocol == "2.7"


def test_codec_rejects_oversized_messages_both_ways() -> None:
    big = Task(id="t", workflow_id="w", workflow="x", step="s", role="r", attempt=1,
               input={"blob": "x" * 5000})
    with pytest.raises(MessageTooLargeError, match="exceeds the limit of 1024 bytes"):
        encode(big, max_bytes=1024)
    with pytest.raises(MessageTooLargeError) as exc:
        decode(encode(big), Task, max_bytes=1024)
    assert exc.value.size > exc.value.limit == 1024


def test_codec_rejects_deeply_nested_payloads() -> None:
    nested: dict[str, object] = {}
    cur = nested
    for _ in range(50):
        cur["a"] = {}
        cur = cur["a"]  # type: ignore[assignment]
    task = Task(id="t", workflow_id="w", workflow="x", step="s", role="r", attempt=1,
                input=nested)
    with pytest.raises(DecodeError, match="nested deeper than 32"):
        decode(encode(task), Task)
    assert decode(encode(task), Task, max_depth=64).input == nested


def test_subjects_follow_the_prefix() -> None:
    s = Subjects("acme")
    assert s.task("triage") == "acme.task.triage"
    assert s.result("w1", "triage") == "acme.journal.w1.result.triage"
    assert s.journal("w1") == "acme.journal.w1.>"
    assert s.parse_journal("acme.journal.w1.result.triage") == ("w1", "result", "triage")
    assert s.parse_journal("acme.journal.w1.decision") == ("w1", "decision", "")
    assert s.parse_journal("acme.task.triage") is None
    assert s.tool("kb_search", "retrieval") == "acme.tool.kb_search.retrieval"
    assert s.tool_endpoint("kb_search") == "acme.tool.kb_search.*"
    assert s.dlq("task") == "acme.dlq.task"
    assert s.stream("tasks") == "ACME_TASKS"
    assert s.bucket("workflows") == "acme_workflows"
    assert Subjects().submit("w1") == "sy.journal.w1.submit"
    with pytest.raises(ConfigError):
        Subjects().submit("a.b")


@pytest.mark.parametrize("bad", ["", "Bad", "1x", "a.b", "a b", "x" * 40])
def test_subjects_reject_bad_prefixes(bad: str) -> None:
    with pytest.raises(ConfigError):
        Subjects(bad)


@pytest.mark.parametrize("bad", ["a.b", "a*", ">", "", "a b"])
def test_subjects_reject_roles_that_are_not_one_token(bad: str) -> None:
    with pytest.raises(ConfigError, match="not a valid subject token"):
        Subjects().task(bad)


def _grant(**kw: object) -> grants.Grant:
    base: dict[str, object] = dict(id="g", workflow_id="w", task_id="t", role="r", tools=["a"],
                                   budget=2, issued_at=NOW, expires_at=NOW + 60, issuer="")
    base.update(kw)
    return grants.Grant(**base)  # type: ignore[arg-type]


def test_grant_verifies_with_the_issuer_key(signer: grants.Signer) -> None:
    token = signer.mint(_grant())
    g = grants.verify(token, {signer.public_key}, NOW + 1)
    assert g.issuer == signer.public_key and g.tools == ["a"]


def test_grant_from_another_key_is_rejected(signer: grants.Signer) -> None:
    other = grants.Signer(grants.new_seed())
    with pytest.raises(protocol.GrantInvalidError, match="not trusted"):
        grants.verify(other.mint(_grant()), {signer.public_key}, NOW)


def test_grant_forged_with_a_trusted_issuer_name_is_rejected(signer: grants.Signer) -> None:
    other = grants.Signer(grants.new_seed())
    body = msgspec.json.encode(_grant(issuer=signer.public_key))
    forged = f"{grants._b64(body)}.{grants._b64(other._keys.sign(body))}"
    with pytest.raises(protocol.GrantInvalidError, match="signature does not match"):
        grants.verify(forged, {signer.public_key}, NOW)


def test_grant_altered_after_signing_is_rejected(signer: grants.Signer) -> None:
    token = signer.mint(_grant())
    _, sig = token.split(".")
    wider = msgspec.json.encode(_grant(tools=["a", "refund"], issuer=signer.public_key))
    with pytest.raises(protocol.GrantInvalidError):
        grants.verify(f"{grants._b64(wider)}.{sig}", {signer.public_key}, NOW)


def test_grant_expired_names_both_times(signer: grants.Signer) -> None:
    token = signer.mint(_grant(expires_at=NOW))
    with pytest.raises(protocol.GrantExpiredError, match=r"expired at .*Z \(now .*Z\)") as exc:
        grants.verify(token, {signer.public_key}, NOW + 5)
    assert exc.value.code == "grant_expired"


@pytest.mark.parametrize("token", ["", "garbage", "a.b", "x" * 9000])
def test_grant_missing_or_malformed_is_rejected(token: str, signer: grants.Signer) -> None:
    with pytest.raises(protocol.GrantInvalidError):
        grants.verify(token, {signer.public_key}, NOW)


def test_grant_check_tool_scopes() -> None:
    g = _grant()
    grants.check_tool(g, "a", "w", "t")
    with pytest.raises(protocol.ToolNotGrantedError, match="'b' is not in the grant"):
        grants.check_tool(g, "b", "w", "t")
    with pytest.raises(protocol.GrantScopeError, match="workflow"):
        grants.check_tool(g, "a", "other", "t")
    with pytest.raises(protocol.GrantScopeError, match="task"):
        grants.check_tool(g, "a", "w", "other")


def test_schema_export_covers_every_message() -> None:
    schemas = message_schemas()
    assert set(schemas) == {type(m).__name__ for m in SAMPLES}
    assert "confidence" in json.dumps(schemas["Result"])


def test_asyncapi_lists_every_subject_family() -> None:
    doc = asyncapi(Subjects("acme"))
    assert doc["asyncapi"].startswith("3.")
    addresses = {c["address"] for c in doc["channels"].values()}
    assert {"acme.journal.{workflow_id}.submit", "acme.task.{role}",
            "acme.journal.{workflow_id}.result.{role}", "acme.tool.{tool}.{caller}",
            "acme.human.queue", "acme.journal.{workflow_id}.decision",
            "acme.journal.{workflow_id}.timer", "acme.journal.{workflow_id}.notice",
            "acme.event.{workflow_id}",
            "acme.dlq.{kind}", "acme.workflow.outcome.{workflow_id}"} <= addresses
    for op in doc["operations"].values():
        assert op["channel"]["$ref"].removeprefix("#/channels/") in doc["channels"]


def test_public_api_all_is_sorted_and_complete() -> None:
    import switchyard.agents as agents
    import switchyard.supervisor as supervisor
    import switchyard.tools as tools

    for module in (protocol, agents, tools, supervisor):
        names = module.__all__
        isort_style = sorted(names, key=lambda n: (0 if n.isupper() else 1 if n[0].isupper() else 2, n))
        assert names == isort_style, module.__name__
        for name in names:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_every_public_exception_is_exported() -> None:
    import switchyard.protocol.errors as errors

    defined = {n for n, v in vars(errors).items()
               if isinstance(v, type) and issubclass(v, SwitchyardError)}
    assert defined <= set(protocol.__all__)


def test_error_messages_name_value_and_limit() -> None:
    e = MessageTooLargeError(2000, 1000, "Task")
    assert str(e) == "Task of 2000 bytes exceeds the limit of 1000 bytes"
    assert (e.size, e.limit, e.code) == (2000, 1000, "message_too_large")
