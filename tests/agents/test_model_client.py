"""The OpenAI-compatible client against the stub server, over real HTTP on 127.0.0.1: messages,
structured output, tool calls, streaming, usage and latency, and every way an endpoint fails."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from switchyard.agents.model.client import OpenAICompatibleModel, retry_after
from switchyard.protocol.errors import ModelError
from switchyard.tools.breaker import Breakers
from tests.agents.openai_stub import Stub

KEY = "sk-test-0123456789abcdef"
HI = [{"role": "user", "content": "hi"}]


def client(stub: Stub, model: str = "m", **kw: object) -> OpenAICompatibleModel:
    kw.setdefault("backoff_s", 0.01)
    return OpenAICompatibleModel(stub.url, model, api_key=KEY, **kw)  # type: ignore[arg-type]


async def test_a_completion_has_its_text_usage_and_latency_and_sends_the_key(stub: Stub) -> None:
    model = client(stub)
    reply = await model.chat(HI, temperature=0)
    await model.aclose()
    assert reply.text == "echo: hi" and reply.finish_reason == "stop"
    u = reply.usage
    assert (u.input_tokens, u.model, u.calls) == (len(json.dumps(HI)) // 4, "m", 1)
    assert u.output_tokens > 0 and reply.latency_ms > 0 and u.latency_ms == reply.latency_ms
    sent = stub.calls("m")[0]
    assert sent["authorization"] == f"Bearer {KEY}" and sent["body"]["temperature"] == 0


async def test_structured_output_asks_with_the_json_schema(stub: Stub) -> None:
    stub.answer("m", by_schema={"Verdict": {"ok": True}})
    model = client(stub)
    schema = {"title": "Verdict", "type": "object", "properties": {"ok": {"type": "boolean"}}}
    reply = await model.chat(HI, response_format={
        "type": "json_schema", "json_schema": {"name": "Verdict", "schema": schema}})
    await model.aclose()
    assert json.loads(reply.text) == {"ok": True}
    assert stub.calls("m")[0]["body"]["response_format"]["json_schema"]["schema"] == schema


async def test_tool_calls_come_back_parsed_and_tool_results_go_back(stub: Stub) -> None:
    stub.answer("m", tool_calls=[{"name": "lookup", "arguments": {"email": "a@b.c"}}])
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    model = client(stub)
    first = await model.chat(HI, tools=tools, tool_choice="auto")
    assert first.finish_reason == "tool_calls" and first.text == ""
    (call,) = first.tool_calls
    assert (call.name, json.loads(call.arguments)) == ("lookup", {"email": "a@b.c"})
    history = [*HI, first.message,
               {"role": "tool", "tool_call_id": call.id, "content": '{"found": true}'}]
    second = await model.chat(history, tools=tools)
    await model.aclose()
    assert second.text == "echo: hi" and not second.tool_calls
    assert stub.calls("m")[0]["body"]["tool_choice"] == "auto"
    assert stub.calls("m")[1]["body"]["messages"][1]["tool_calls"][0]["function"]["name"] == "lookup"


async def test_a_streamed_reply_arrives_in_pieces_and_whole_with_usage(stub: Stub) -> None:
    pieces: list[str] = []

    async def on_delta(text: str) -> None:
        pieces.append(text)

    model = client(stub)
    reply = await model.chat([{"role": "user", "content": "a longer message"}], on_delta=on_delta)
    stub.answer("m", tool_calls=[{"name": "lookup", "arguments": {"q": 1}}])
    called = await model.chat(HI, tools=[{"type": "function", "function": {"name": "lookup"}}],
                              on_delta=on_delta)
    await model.aclose()
    assert len(pieces) > 3 and "".join(pieces) == reply.text == "echo: a longer message"
    assert reply.usage.input_tokens > 0 and reply.usage.output_tokens > 0
    assert stub.calls("m")[0]["body"]["stream"] is True
    assert [(c.name, c.arguments) for c in called.tool_calls] == [("lookup", '{"q": 1}')]


async def test_429_waits_what_retry_after_says_then_succeeds(stub: Stub) -> None:
    stub.script("m", {"status": 429, "headers": {"Retry-After": "1"}})
    model = client(stub)
    reply = await model.chat(HI)
    await model.aclose()
    first, second = stub.calls("m")
    assert reply.text == "echo: hi"
    assert second["at"] - first["at"] >= 0.95  # it waited the second the server asked for


async def test_429_asking_for_longer_than_the_cap_is_not_waited_for(stub: Stub) -> None:
    stub.script("m", {"status": 429, "headers": {"Retry-After": "3600"}})
    model = client(stub)
    with pytest.raises(ModelError) as failed:
        await model.chat(HI)
    await model.aclose()
    assert failed.value.status == 429 and failed.value.retryable
    assert len(stub.calls("m")) == 1


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after("2") == 2.0 and retry_after(None) is None and retry_after("soon") is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: at once


async def test_500s_are_retried_and_then_fail_with_what_the_server_said(stub: Stub) -> None:
    stub.script("m", {"status": 500}, {"status": 502})
    model = client(stub, attempts=3)
    assert (await model.chat(HI)).text == "echo: hi"
    assert len(stub.calls("m")) == 3
    stub.script("m", *[{"status": 500, "message": "the GPU is on fire"}] * 3)
    with pytest.raises(ModelError) as failed:
        await model.chat(HI)
    await model.aclose()
    assert failed.value.retryable and failed.value.status == 500
    assert "after 3 attempt(s): the GPU is on fire" in failed.value.message
    assert len(stub.calls("m")) == 6


async def test_a_reply_slower_than_the_timeout_is_a_timeout(stub: Stub) -> None:
    stub.script("m", {"delay_s": 2.0})
    model = client(stub, timeout=0.2, attempts=1)
    with pytest.raises(ModelError) as failed:
        await model.chat(HI)
    await model.aclose()
    assert failed.value.code == "timeout" and failed.value.retryable


async def test_malformed_and_foreign_replies_fail_at_once_without_retrying(stub: Stub) -> None:
    stub.script("m", {"raw": "<html>bad gateway</html>"}, {"raw": '{"hello": "world"}'})
    model = client(stub)
    with pytest.raises(ModelError, match="the reply is not JSON"):
        await model.chat(HI)
    with pytest.raises(ModelError, match="not a chat completion"):
        await model.chat(HI)
    stub.script("m", {"status": 400, "message": "unknown parameter"})
    with pytest.raises(ModelError) as refused:
        await model.chat(HI)
    await model.aclose()
    assert not refused.value.retryable and refused.value.status == 400
    assert "unknown parameter" in refused.value.message
    assert len(stub.calls("m")) == 3  # one each: none of them is worth repeating


async def test_the_breaker_opens_and_then_refuses_without_a_request(stub: Stub) -> None:
    stub.script("m", *[{"status": 503}] * 4)
    model = client(stub, attempts=2, breakers=Breakers(fail_max=3, reset_timeout=60))
    with pytest.raises(ModelError):
        await model.chat(HI)  # two failures
    with pytest.raises(ModelError):
        await model.chat(HI)  # the third opens it, and the fourth attempt is refused
    with pytest.raises(ModelError) as refused:
        await model.chat(HI)
    assert refused.value.code == "circuit_open" and refused.value.retryable
    assert len(stub.calls("m")) == 3
    assert model.breakers.state(model.breaker_name) == "open"
    await model.aclose()


async def test_the_key_is_never_in_a_message_a_repr_or_a_log_line(
    stub: Stub, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    structlog.get_logger("t").info("before")
    stub.script("m", {"status": 401, "message": "bad key"}, *[{"status": 500}] * 3,
                {"raw": "nope"})
    model = client(stub)
    texts = [repr(model)]
    for _ in range(3):
        with pytest.raises(ModelError) as failed:
            await model.chat(HI)
        texts.append(str(failed.value))
    await model.aclose()
    out = capsys.readouterr()
    texts += [caplog.text, out.out, out.err]
    assert all(KEY not in t and KEY[-8:] not in t for t in texts), texts


@pytest.mark.parametrize(("status", "said", "gone"), [
    (401, "the API key was refused", KEY[-4:]),  # hosted APIs echo a masked key: not kept
    (400, "invalid key Bearer [redacted]", KEY),  # a proxy that echoes the header: taken out
])
async def test_what_a_server_says_back_about_the_key_is_not_kept(
    stub: Stub, status: int, said: str, gone: str,
) -> None:
    stub.script("m", {"status": status, "message": f"invalid key Bearer {KEY} ({KEY[-4:]})"})
    model = client(stub)
    with pytest.raises(ModelError) as refused:
        await model.chat(HI)
    await model.aclose()
    assert refused.value.status == status and not refused.value.retryable
    assert said in refused.value.message and gone not in str(refused.value)
