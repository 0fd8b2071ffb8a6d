"""A real inference server: llama-cpp-python's OpenAI-compatible server, loading a tiny GGUF model
the test writes itself (random weights: the point is the server and its protocol, not the
answers). Needs the ``llm`` extra (``pip install -e '.[llm]'``, which builds llama.cpp from source:
about 5 minutes on 2 cores); skipped without it, unless ``SWITCHYARD_TESTS_REQUIRE`` names
``llama-cpp`` (CI)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from switchyard.agents.llm.action import TOOLS
from switchyard.agents.llm.triage import Classified
from switchyard.agents.model.catalogue import Catalogue, ModelSpec
from switchyard.agents.model.routing import ModelRouter
from switchyard.natsd import free_ports
from tests.parts import require

pytestmark = pytest.mark.llm
CLI = str(Path(sys.executable).parent / "switchyard")


@pytest.fixture(scope="module")
async def llama(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """The server's base URL, the server running the tiny model on 127.0.0.1."""
    if importlib.util.find_spec("llama_cpp") is None:
        require("llama-cpp", "llama-cpp-python[server] is not installed (pip install -e '.[llm]')")
    from tests.agents.tiny_gguf import write_tiny_gguf

    tmp = tmp_path_factory.mktemp("llama")
    model = write_tiny_gguf(tmp / "tiny.gguf")
    port = free_ports(1)
    log = (tmp / "server.log").open("wb")
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
        "--port", str(port), "--n_ctx", "8192", "--model_alias", "tiny",
        # one request at a time, each to its end: by default a new request cuts off the one
        # being streamed, which the agents (8 tasks at once) would see as empty replies
        "--interrupt_requests", "False",
        stdout=log, stderr=asyncio.subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        async with httpx.AsyncClient() as http:
            deadline = time.monotonic() + 120
            while True:
                if proc.returncode is not None:
                    pytest.fail(f"the llama.cpp server exited: {(tmp / 'server.log').read_text()}")
                try:
                    if (await http.get(f"{url}/models")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the llama.cpp server did not answer in 120 s"
                await asyncio.sleep(0.2)
        print(f"llama.cpp server up in {time.monotonic() - started:.1f} s")
        yield url
    finally:
        proc.terminate()
        async with asyncio.timeout(30):
            await proc.wait()
        log.close()


def router(url: str) -> ModelRouter:
    # as a user would: the OpenAI form of structured output; the router learns that this
    # server wants the older form
    return ModelRouter(Catalogue(models=[ModelSpec(name="tiny", base_url=url, timeout_s=120)]),
                       default="tiny")


async def test_structured_output_through_the_servers_json_schema_grammar(llama: str) -> None:
    r = router(llama)
    models = r.for_task(None)
    got = await models.structured(
        [{"role": "user", "content": "I was charged twice"}], Classified, max_tokens=120)
    assert isinstance(got, Classified)  # whatever the random weights say, the grammar held
    assert r.formats == {"tiny": "json_object"}  # refused json_schema, then took the schema
    assert models.usage.input_tokens > 0 and models.usage.output_tokens > 0  # usage fields
    assert not any(c.estimated for c in models.calls)
    await r.aclose()


async def test_tool_calls(llama: str) -> None:
    r = router(llama)
    reply = await r.for_task(None).chat(
        [{"role": "user", "content": "refund 40 EUR"}], tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "propose_refund"}},
        max_tokens=100)
    (call,) = reply.tool_calls
    assert call.name == "propose_refund" and reply.finish_reason == "tool_calls"
    assert "amount" in json.loads(call.arguments, strict=False)
    await r.aclose()


async def test_streaming(llama: str) -> None:
    pieces: list[str] = []

    async def on_delta(text: str) -> None:
        pieces.append(text)

    r = router(llama)
    models = r.for_task(None, on_delta=on_delta)
    reply = await models.chat([{"role": "user", "content": "hello"}], max_tokens=40, stream=True)
    assert len(pieces) > 1 and "".join(pieces) == reply.text
    (call,) = models.calls  # this server reports no usage when streaming: estimated
    assert call.estimated and call.output_tokens > 0 and models.usage.input_tokens > 0
    await r.aclose()


async def test_the_llm_support_workflow_runs_end_to_end_on_the_demo(
    llama: str, tmp_path: Path, record_property: object,
) -> None:
    """``switchyard demo --models llm --base-url URL --model NAME``, as the README says: every
    ticket reaches an outcome or a person through the real server, and the model calls are
    accounted for."""
    env = {**os.environ, "NATS_URL": f"nats://127.0.0.1:{free_ports(1)}"}
    env.pop("SWITCHYARD_DATA_DIR", None)
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        CLI, "demo", "--models", "llm", "--base-url", llama, "--model", "tiny", "--json",
        "--timeout", "300", env=env, cwd=tmp_path, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(420):
        out, err = await proc.communicate()
    report = json.loads(out)
    took = time.monotonic() - started
    record_property("report", f"{report['tickets']} tickets in {took:.0f} s: {report['counts']}; "
                    f"{report['usage']['calls']} model calls, {report['usage']['input_tokens']}"
                    f"+{report['usage']['output_tokens']} tokens")  # type: ignore[operator]
    assert proc.returncode == 0 and report["ok"], err.decode()[-3000:]
    assert report["tickets"] == 30 and report["counts"].get("running", 0) == 0
    # every ticket's triage asked the model at least once; each one completed, three steps
    assert report["usage"]["calls"] >= 30 + 2 * report["counts"].get("completed", 0)
    assert report["usage"]["input_tokens"] > 0 and report["usage"]["output_tokens"] > 0


@pytest.mark.timeout(600)
async def test_the_llm_variants_are_scored_by_the_same_command(
    llama: str, tmp_path: Path, record_property: object,
) -> None:
    """``switchyard eval support --models llm …``: the golden set's cases through the LLM agents
    on the real server, and a report that names the model and the prompts that produced it
    (the tiny model's random weights answer nonsense: the point is the path, not the score)."""
    env = {**os.environ, "NATS_URL": f"nats://127.0.0.1:{free_ports(1)}"}
    env.pop("SWITCHYARD_DATA_DIR", None)
    report = tmp_path / "llm.json"
    proc = await asyncio.create_subprocess_exec(
        CLI, "eval", "support", "--models", "llm", "--base-url", llama, "--model", "tiny",
        "--only", "currency:GBP", "--only", "injection", "--min-pass", "0", "--timeout", "300",
        "--report", str(report), env=env, cwd=tmp_path, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(540):
        out, err = await proc.communicate()
    assert proc.returncode == 0, out.decode()[-3000:] + err.decode()[-3000:]
    r = json.loads(report.read_text())
    record_property("report", f"{r['summary']['cases']} cases: pass rate "
                    f"{r['summary']['pass_rate']}, {r['summary']['tokens_per_case']} tokens and "
                    f"{r['summary']['latency_s']['p50']} s (p50) per case")  # type: ignore[operator]
    p = r["provenance"]
    assert p["workflow"] == "support-llm" and "llm" in p["models"]
    assert p["model_ids"]["llm"] == f"tiny at {llama}"  # the provider's id, where it answered
    assert {x.split("@")[0] for x in p["prompts"]} >= {"triage"}
    assert r["summary"]["cases"] == 6 and r["summary"]["timeouts"] == 0
    assert r["summary"]["tokens_per_case"] > 0
    # the rules still send what they flag to a person, whatever the model says
    injected = [c for c in r["cases"] if "injection" in c["tags"]]
    assert all(c["status"] == "escalated" and c["kind"] == "routed" for c in injected), injected
