"""Traces across processes: the stack as separate processes exporting over OTLP/HTTP to a
receiver this test runs on 127.0.0.1, decoded with opentelemetry-proto. A five-step run is one
trace, every span parented within it, the names and attributes the conventions'."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.semconv._incubating.attributes import messaging_attributes as messaging
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from switchyard.client import SwitchyardClient, WaitResult
from switchyard.protocol.bus import tracing
from switchyard.settings import Settings
from switchyard.stack import LocalStack
from tests.agents.openai_stub import StubServer
from tests.e2e.test_metrics import ANSWERS as LLM_ANSWERS

pytestmark = pytest.mark.e2e
ROLES = ("triage", "retrieval", "action", "compliance", "reviewer")


class Receiver:
    """An OTLP/HTTP trace receiver: every span it is sent, with its service's name."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Any]] = []
        self.lock = threading.Lock()
        app = Starlette(routes=[Route("/v1/traces", self.traces, methods=["POST"])])
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0,
                                                     log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self.url = ""

    async def traces(self, request: Request) -> Response:
        body = ExportTraceServiceRequest.FromString(await request.body())
        with self.lock:
            for resource in body.resource_spans:
                service = next((a.value.string_value for a in resource.resource.attributes
                                if a.key == "service.name"), "")
                for scope in resource.scope_spans:
                    self.spans += [(service, span) for span in scope.spans]
        return Response(ExportTraceServiceResponse().SerializeToString(),
                        media_type="application/x-protobuf")

    def of_trace(self, trace_id: int) -> list[tuple[str, Any]]:
        with self.lock:
            return [(s, span) for s, span in self.spans
                    if int.from_bytes(span.trace_id, "big") == trace_id]

    def __enter__(self) -> Receiver:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline and self._thread.is_alive()
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{self._server.servers[0].sockets[0].getsockname()[1]}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture(scope="module")
async def traced_stack(nats_url: str, receiver: Receiver,
                       tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    data: Path = tmp_path_factory.mktemp("traced")  # the processes' logs: data/logs
    settings = Settings(nats_url=nats_url, prefix=f"t{uuid.uuid4().hex[:8]}", data_dir=data)
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    async with LocalStack(settings, env=env) as stack:
        yield stack


@pytest.fixture(scope="module")
def traced(traced_stack: LocalStack) -> Settings:
    return traced_stack.settings


async def exported(receiver: Receiver, wid: str, holds: Callable[[list[str]], bool]) -> None:
    """Until the spans of ``wid``'s trace received so far satisfy ``holds`` (by their names):
    the processes export in batches, every 100 ms here."""
    async with asyncio.timeout(30):
        while not holds([span.name for _, span in  # noqa: ASYNC110 - no event to wait on
                         receiver.of_trace(tracing.trace_id(wid))]):
            await asyncio.sleep(0.1)


async def ticket(settings: Settings, nc: Any, text: str, email: str) -> tuple[
        SwitchyardClient, str, WaitResult]:
    """Submit a support ticket; its workflow id and what it came to (an outcome or a person)."""
    client = SwitchyardClient(nc, settings.subjects)
    wid = await client.submit("support", {"text": text, "customer_email": email})
    return client, wid, await client.wait(wid, timeout=60)


def attrs(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = (v.string_value if v.HasField("string_value") else v.int_value
                      if v.HasField("int_value") else [x.string_value for x in v.array_value.values])
    return out


async def test_a_five_step_run_across_processes_is_one_trace_parented_throughout(
    traced: Settings, receiver: Receiver, nc: Any,
) -> None:
    _, wid, done = await ticket(traced, nc, "I was charged twice for my subscription",
                                "ada@example.com")
    assert done.status == "completed", done.reason
    await exported(receiver, wid, lambda names: "invoke_workflow support" in names
                   and sum(n.startswith("invoke_agent") for n in names) == len(ROLES))
    spans = receiver.of_trace(tracing.trace_id(wid))
    by_id = {span.span_id: (service, span) for service, span in spans}
    (root,) = [span for _, span in spans if not span.parent_span_id]
    assert root.name == "invoke_workflow support"
    assert int.from_bytes(root.span_id, "big") == tracing.root_span_id(wid)
    orphans = [span.name for _, span in spans if span.parent_span_id
               and span.parent_span_id not in by_id]
    assert orphans == []  # every span's parent is in the trace
    names = {span.name for _, span in spans}
    assert {f"invoke_agent {role}" for role in ROLES} <= names
    assert {"execute_tool kb_search", "execute_tool lookup_customer",
            "execute_tool open_ticket", "process submit", "process result"} <= names
    # each agent's span hangs from the supervisor span that sent its task, in another process
    for service, span in spans:
        if span.name.startswith("invoke_agent"):
            parent_service, parent = by_id[span.parent_span_id]
            assert parent.name == "process " + ("submit" if "triage" in span.name else "result")
            assert (service, parent_service) == (
                f"switchyard-agent-{span.name.split()[1]}", "switchyard-supervisor")
            a = attrs(span)
            assert a[gen_ai.GEN_AI_OPERATION_NAME] == "invoke_agent"
            assert a[gen_ai.GEN_AI_AGENT_NAME] == span.name.split()[1]
            assert a[messaging.MESSAGING_SYSTEM] == "nats"
            assert a[messaging.MESSAGING_OPERATION_TYPE] == "process"
        if span.name.startswith("execute_tool") and span.kind == span.SPAN_KIND_SERVER:
            _, parent = by_id[span.parent_span_id]  # the tool host's, under the agent's call
            assert parent.name == span.name and parent.kind == span.SPAN_KIND_CLIENT
            assert attrs(span)[gen_ai.GEN_AI_TOOL_NAME] == span.name.split()[1]
    # nothing a message holds is in a span: the ticket's text and email are nowhere
    everything = " ".join(str(attrs(span)) + span.name for _, span in spans)
    assert "ada@example.com" not in everything and "charged twice" not in everything


async def test_a_persons_wait_is_a_span_from_the_escalation_to_the_decision(
    traced: Settings, receiver: Receiver, nc: Any,
) -> None:
    client, wid, waiting = await ticket(traced, nc, "Our lawyer will file a lawsuit about the "
                                        "outage", "linus@example.org")
    assert waiting.status == "escalated" and waiting.escalation_id is not None
    await client.decide(waiting.escalation_id, "reject", reviewer="ann", note="no")
    assert (await client.wait(wid, timeout=60, stop_at_escalation=False)).status == "rejected"
    await exported(receiver, wid, lambda names: "invoke_workflow support" in names)
    spans = [span for _, span in receiver.of_trace(tracing.trace_id(wid))]
    (wait,) = [span for span in spans if span.name.startswith("human_wait")]
    assert wait.name == "human_wait routed"
    assert int.from_bytes(wait.parent_span_id, "big") == tracing.root_span_id(wid)
    a = attrs(wait)
    assert (a["switchyard.escalation.id"], a["switchyard.decision.action"]) == (
        waiting.escalation_id, "reject")
    assert wait.end_time_unix_nano > wait.start_time_unix_nano


async def test_personal_data_in_a_ticket_reaches_no_span_and_no_log_line(
    traced: Settings, receiver: Receiver, nc: Any,
) -> None:
    card, iban, email = "4111 1111 1111 1111", "GB82 WEST 1234 5698 7654 32", "bob@example.com"
    _, wid, _ = await ticket(traced, nc, f"Refund my card {card}, or pay IBAN {iban}; write to "
                             f"{email}. Charged twice.", "ada@example.com")
    await exported(receiver, wid, lambda names: sum(n.startswith("invoke_agent")
                                                    for n in names) >= 2)
    spans = " ".join(str(attrs(span)) + span.name for _, span in
                     receiver.of_trace(tracing.trace_id(wid)))
    logs = "\n".join(p.read_text() for p in (traced.data_dir / "logs").glob("*.log"))
    for secret in (card, card.replace(" ", ""), iban, iban.replace(" ", ""), email):
        assert secret not in spans and secret not in logs, secret
    # and a line logged inside a span names it: the triage agent's, in this run's trace
    assert f'"trace_id": "{tracing.trace_id(wid):032x}"' in logs


async def test_contents_are_recorded_only_when_the_operator_opts_in_and_then_without_pii(
    nats_url: str, receiver: Receiver, tmp_path: Path, nc: Any,
) -> None:
    """``SWITCHYARD_TRACE_CONTENT=1``: the LLM agents' model calls carry their messages and the
    tool calls their arguments and results, the card and email in them redacted."""
    server = StubServer()
    stub = server.start()
    stub.answer("default", by_schema=LLM_ANSWERS)
    settings = Settings(nats_url=nats_url, prefix=f"c{uuid.uuid4().hex[:8]}", data_dir=tmp_path,
                        workflows="support-llm")
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100",
           "SWITCHYARD_TRACE_CONTENT": "1", "SWITCHYARD_AGENTS": "llm",
           "SWITCHYARD_MODEL_BASE_URL": stub.url}
    card, email = "4111 1111 1111 1111", "bob@example.com"
    try:
        async with LocalStack(settings, env=env):
            client = SwitchyardClient(nc, settings.subjects)
            # the subject the action agent opens its ticket with is the text's first 80
            # characters: the card and the address are cut there, and no detector sees them
            wid = await client.submit("support-llm", {
                "text": "I was charged twice and I would like you to look into it today: "
                        f"card {card} twice; write to {email}",
                "customer_email": "ada@example.com"})
            assert (await client.wait(wid, timeout=60, stop_at_escalation=False)).status == "completed"
            await exported(receiver, wid, lambda names: "invoke_workflow support-llm" in names)
    finally:
        server.stop()
    spans = [span for _, span in receiver.of_trace(tracing.trace_id(wid))]
    chats = [attrs(span) for span in spans if span.name.startswith("chat ")]
    assert chats and all(gen_ai.GEN_AI_INPUT_MESSAGES in a and gen_ai.GEN_AI_OUTPUT_MESSAGES in a
                         for a in chats)
    triage = next(a for a in chats if "charged twice" in a[gen_ai.GEN_AI_INPUT_MESSAGES])
    opened = [attrs(span) for span in spans if span.name == "execute_tool open_ticket"
              and span.kind == span.SPAN_KIND_CLIENT]
    assert opened and "[number]" in opened[0][gen_ai.GEN_AI_TOOL_CALL_ARGUMENTS]  # cut, masked
    assert json.loads(triage[gen_ai.GEN_AI_OUTPUT_MESSAGES])[0]["role"] == "assistant"
    tools = [attrs(span) for span in spans if span.name == "execute_tool lookup_customer"
             and span.kind == span.SPAN_KIND_CLIENT]
    assert tools and "ada@" not in tools[0][gen_ai.GEN_AI_TOOL_CALL_ARGUMENTS]  # redacted too
    assert json.loads(tools[0][gen_ai.GEN_AI_TOOL_CALL_RESULT])["ok"] is True
    everything = " ".join(str(attrs(span)) for span in spans)
    for secret in (card, card.replace(" ", ""), email, "ada@example.com", "4111 1111",
                   "bob@", "ada@"):
        assert secret not in everything, secret


async def test_a_run_stays_one_trace_across_a_supervisor_restart(
    traced: Settings, receiver: Receiver, nc: Any, request: pytest.FixtureRequest,
) -> None:
    """Escalated, then the supervisor killed and started again, then decided: the spans of both
    supervisors and of the agents after the restart are in the run's one trace, parented."""
    stack: LocalStack = request.getfixturevalue("traced_stack")
    client, wid, waiting = await ticket(traced, nc, "hmm something maybe", "ada@example.com")
    assert waiting.status == "escalated" and waiting.escalation_id is not None
    await exported(receiver, wid, lambda names: "process result" in names)
    before = {span.span_id for _, span in receiver.of_trace(tracing.trace_id(wid))}
    old = stack.procs["supervisor"]
    old.kill()  # no drain, no flush of what it had not exported
    await old.wait()
    await stack.respawn("supervisor")
    await client.decide(waiting.escalation_id, "approve", reviewer="ann")
    assert (await client.wait(wid, timeout=60, stop_at_escalation=False)).status == "completed"
    await exported(receiver, wid, lambda names: "invoke_workflow support" in names
                   and "human_wait low_confidence" in names)
    spans = receiver.of_trace(tracing.trace_id(wid))
    by_id = {span.span_id for _, span in spans}
    after = [span for _, span in spans if span.span_id not in before]
    assert {s.name for s in after} >= {"process decision", "invoke_agent retrieval",
                                       "human_wait low_confidence", "invoke_workflow support"}
    orphans = [s.name for _, s in spans if s.parent_span_id and s.parent_span_id not in by_id]
    assert orphans == []  # the restarted supervisor hangs its spans from the same root
    (root,) = [s for _, s in spans if not s.parent_span_id]
    assert int.from_bytes(root.span_id, "big") == tracing.root_span_id(wid)
