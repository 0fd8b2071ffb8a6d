"""Metrics: the stack as separate processes (the LLM agents, on the stub model server), each
serving /metrics on its own port, scraped and parsed with prometheus-client's own parser while
the test drives tasks, escalations, a refused tool call, a dead letter and model calls."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client
from prometheus_client.parser import text_string_to_metric_families

from switchyard.client import SwitchyardClient
from switchyard.natsd import free_ports
from switchyard.protocol import ToolCall, encode
from switchyard.settings import Settings
from switchyard.stack import ROLES, LocalStack
from tests.agents.openai_stub import Stub, StubServer

pytestmark = pytest.mark.e2e
ANSWERS = {"Classified": {"intent": "billing", "severity": "normal", "sensitivity": "normal",
                          "confidence": "high"},
           "Reply": {"reply": "Hello Ada,\nWe are on it [KB-101]."},
           "Judged": {"failed_checks": []}}


@pytest.fixture(scope="module")
def model_server() -> Iterator[Stub]:
    server = StubServer()
    stub = server.start()
    stub.answer("default", by_schema=ANSWERS)
    yield stub
    server.stop()


@pytest.fixture(scope="module")
async def metered(nats_url: str, model_server: Stub, tmp_path_factory: pytest.TempPathFactory
                  ) -> AsyncIterator[LocalStack]:
    data: Path = tmp_path_factory.mktemp("metered")
    base = free_ports(len(ROLES) + 2)
    settings = Settings(nats_url=nats_url, prefix=f"m{uuid.uuid4().hex[:8]}", data_dir=data,
                        metrics_port=base, workflows="support-llm")
    env = {"SWITCHYARD_AGENTS": "llm", "SWITCHYARD_MODEL_BASE_URL": model_server.url}
    async with LocalStack(settings, env=env) as stack:
        yield stack


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(stack: LocalStack) -> dict[str, Samples]:
    """Every process's samples, by process: (name, labels) -> value."""
    out: dict[str, Samples] = {}
    async with httpx.AsyncClient() as http:
        for name, port in stack.metrics_ports.items():
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
            out[name] = {(s.name, tuple(sorted(s.labels.items()))): s.value
                         for family in text_string_to_metric_families(text)
                         for s in family.samples}
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items()
               if n == name and all((k, v2) in ls for k, v2 in labels.items()))


async def test_every_process_serves_counters_that_move_with_the_work(
    metered: LocalStack, nc: Client, model_server: Stub,
) -> None:
    s = metered.settings.subjects
    before = await scrape(metered)
    assert set(before) == {"supervisor", "toolhost", *(f"agent-{r}" for r in ROLES)}
    client = SwitchyardClient(nc, s)
    done = await client.wait(await client.submit("support-llm", {
        "text": "I was charged twice", "customer_email": "ada@example.com"}), timeout=60)
    assert done.status == "completed", done.reason
    model_server.answer("default", by_schema={**ANSWERS, "Classified": {
        **ANSWERS["Classified"], "intent": "legal"}})
    routed = await client.wait(await client.submit("support-llm", {
        "text": "Our lawyer will call", "customer_email": "ada@example.com"}), timeout=60)
    model_server.answer("default", by_schema=ANSWERS)
    assert (routed.status, routed.kind) == ("escalated", "routed")
    forged = ToolCall(tool="kb_search", args={"query": "x"}, grant="forged", task_id="t",
                      workflow_id="w")
    reply = await nc.request(s.tool("kb_search", "retrieval"), encode(forged), timeout=10)
    assert b"grant" in reply.data
    js = nc.jetstream()
    await js.publish(s.task("reviewer"), b"{not a task")  # dead-lettered by the agent
    after = await scrape(metered)

    def moved(process: str, name: str, **labels: str) -> float:
        return value(after[process], name, **labels) - value(before[process], name, **labels)

    sup, tools = "supervisor", "toolhost"
    assert moved(sup, "switchyard_supervisor_inputs_total", kind="submit") == 2
    assert moved(sup, "switchyard_supervisor_workflows_total", status="completed") == 1
    assert moved(sup, "switchyard_supervisor_escalations_total", kind="routed") == 1
    assert moved(sup, "switchyard_supervisor_steps_total", role="triage", status="ok") == 2
    assert moved(sup, "switchyard_supervisor_step_seconds_count", role="action") == 1
    assert moved(sup, "switchyard_supervisor_escalations_waiting") == 1
    assert moved("agent-triage", "switchyard_agent_tasks_total", role="triage",
                 outcome="ok") == 2
    assert moved("agent-triage", "switchyard_agent_model_calls_total", model="llm",
                 outcome="ok") == 2
    assert moved("agent-triage", "switchyard_agent_model_tokens_total", model="llm",
                 type="input") > 0
    assert moved("agent-action", "switchyard_agent_model_call_seconds_count", model="llm") >= 2
    assert moved(tools, "switchyard_toolhost_calls_total", tool="kb_search",
                 outcome="refused") == 1
    assert moved(tools, "switchyard_toolhost_calls_total", tool="open_ticket", outcome="ok") == 1
    breakers = {dict(ls).get("name"): v for (n, ls), v in after[tools].items()
                if n == "switchyard_breaker_state"}
    assert breakers.get("open_ticket") == 0  # closed, and there to be seen
    model_breakers = [dict(ls) for (n, ls), _ in after["agent-triage"].items()
                      if n == "switchyard_breaker_state"]
    assert model_breakers and all(b["name"].endswith("#default") for b in model_breakers)
    reviewer = await _until(metered, lambda m: value(
        m["agent-reviewer"], "switchyard_agent_tasks_total", outcome="dead_lettered") > value(
        before["agent-reviewer"], "switchyard_agent_tasks_total", outcome="dead_lettered"))
    assert reviewer
    # every name follows the conventions: switchyard_, and a unit or _total where it counts
    for samples in after.values():
        for name, _ in samples:
            if name.startswith("switchyard_"):
                assert name.endswith(("_total", "_seconds", "_count", "_sum", "_bucket",
                                      "_created", "_waiting", "_state")), name


async def _until(stack: LocalStack, holds: Any) -> bool:
    import asyncio

    async with asyncio.timeout(20):
        while not holds(await scrape(stack)):  # noqa: ASYNC110 - a scrape is all there is
            await asyncio.sleep(0.1)
    return True
