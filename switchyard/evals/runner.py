"""Run a golden set through the live stack: each case submitted as a run, followed to its outcome
or to the person it waits for, then read back from the bus (the journal's results, the tool
host's records of the calls) and scored."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

from switchyard.client import SwitchyardClient
from switchyard.evals.golden import Case
from switchyard.evals.score import CaseScore, Observed, ToolUse, score_case
from switchyard.natsd import free_ports
from switchyard.protocol.errors import ConfigError
from switchyard.protocol.expressions import holds
from switchyard.settings import Settings
from switchyard.stack import LocalStack, connect_running
from switchyard.supervisor.authz import CONSOLE
from switchyard.supervisor.policy import Policy

EVAL_REVIEWER = "switchyard-eval"
DEPLOYMENT_ENV = ("SWITCHYARD_SUPERVISOR_SEED", "SWITCHYARD_TRUSTED_KEYS", "SWITCHYARD_NKEY_FILE",
                  "SWITCHYARD_METRICS_PORT", "OTEL_EXPORTER_OTLP_ENDPOINT",
                  "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER")
CALLED = "tool.called"  # a replayed call is the same call, recorded again


async def run_cases(
    settings: Settings, cases: list[Case], workflow: str, *, connect: bool = False,
    agents: dict[str, str] | None = None, timeout: float = 60.0, concurrency: int = 8,
    on_case: Callable[[CaseScore], None] | None = None,
) -> tuple[list[CaseScore], list[dict[str, Any]]]:
    """Score every case, on a stack of its own (with ``agents`` swapping a role's agent for
    another ``module:attr``) or on the one running at ``NATS_URL``; returns the scores and the
    services that answered (their versions).

    A stack of its own is one: an embedded nats-server on a free loopback port and a data
    directory of its own (the support store, the supervisor's key), both gone afterwards, so
    nothing of the run reaches a deployment that ``NATS_URL`` or ``SWITCHYARD_DATA_DIR`` name."""
    if connect:
        nc = await connect_running(settings, "runs the set")
        try:
            return await _drive(nc, settings, cases, workflow, timeout, concurrency, on_case,
                                settle=True)
        finally:
            await nc.drain()
    stack_agents = None
    if agents:
        from switchyard.stack import ROLES

        stack_agents = {role: agents.get(role, role) for role in ROLES}
        unknown = sorted(set(agents) - set(ROLES))
        if unknown:
            raise ConfigError(f"--agent names a role the stack does not run: {', '.join(unknown)} "
                              f"(roles: {', '.join(ROLES)})")
    # nothing of a deployment's identity or exporters: its key, its trusted keys, its bus
    # credentials, its metrics port, its traces' collector
    for name in DEPLOYMENT_ENV:
        os.environ.pop(name, None)
    os.environ["OTEL_SDK_DISABLED"] = "true"
    with tempfile.TemporaryDirectory(prefix="switchyard-eval-") as data:
        own = settings.model_copy(update={
            "nats_url": f"nats://127.0.0.1:{free_ports(1)}", "data_dir": Path(data),
            "supervisor_seed": None, "trusted_keys": "", "nkey_file": None, "metrics_port": 0})
        async with LocalStack(own, agents=stack_agents) as stack:
            from switchyard.protocol.bus.component import servers

            nc = await nats.connect(servers(stack.url), **stack.connect_options(CONSOLE))
            try:
                return await _drive(nc, own, cases, workflow, timeout, concurrency, on_case,
                                    settle=False)
            finally:
                await nc.drain()


async def _drive(
    nc: Client, settings: Settings, cases: list[Case], workflow: str, timeout: float,
    concurrency: int, on_case: Callable[[CaseScore], None] | None, *, settle: bool,
) -> tuple[list[CaseScore], list[dict[str, Any]]]:
    client = SwitchyardClient(nc, settings.subjects)
    policy = settings.load_policy()
    batch = uuid.uuid4().hex[:8]
    gate = asyncio.Semaphore(max(1, concurrency))
    scores: dict[str, CaseScore] = {}

    async def one(case: Case) -> None:
        wid = f"eval-{batch}-{case.id}"
        async with gate:
            try:
                observed = await observe(client, case, case.workflow or workflow, wid, timeout,
                                         policy)
            except Exception as exc:  # one case's trouble is that case's failure, not the run's
                observed = Observed(wid, "failed", reason=f"not observed: {type(exc).__name__}: "
                                                          f"{exc}")
            if settle:  # a shared stack's queue is left as it was: at once, not at the end
                await _reject_open(client, observed)
        scored = score_case(case, observed)
        scores[case.id] = scored
        if on_case is not None:
            on_case(scored)

    await asyncio.gather(*(one(c) for c in cases))
    services = await client.services()
    return [scores[c.id] for c in cases], services


async def observe(client: SwitchyardClient, case: Case, workflow: str, workflow_id: str,
                  timeout: float, policy: Policy | None) -> Observed:
    t0 = time.perf_counter()
    await client.submit(workflow, case.input, workflow_id=workflow_id,
                        metadata={"eval": "golden", "case": case.id})
    waited = await client.wait(workflow_id, timeout=timeout)
    seen = Observed(workflow_id, waited.status, kind=waited.kind, reason=waited.reason,
                    escalation_id=waited.escalation_id,
                    latency_s=round(time.perf_counter() - t0, 4))
    if waited.outcome is not None:
        seen.output = waited.outcome.output
    await _read_results(client, seen)
    await _read_calls(client, seen, policy)
    return seen


async def _read_results(client: SwitchyardClient, seen: Observed) -> None:
    for result in await client.results(seen.workflow_id):
        if result.output is not None:
            seen.steps[result.step] = result.output
            seen.confidence[result.step] = result.confidence
        seen.cost_usd = round(seen.cost_usd + result.usage.cost_usd, 9)
        seen.tokens += result.usage.input_tokens + result.usage.output_tokens
        if result.model is not None:
            seen.models.update({result.model.model} - {""})
            seen.prompts.update({result.model.prompt} - {""})


async def _read_calls(client: SwitchyardClient, seen: Observed, policy: Policy | None) -> None:
    rules = policy.tools if policy is not None else {}
    for event in await client.events(seen.workflow_id):
        for entry in event.entries:
            if entry.type != CALLED:
                continue
            tool = str(entry.data.get("tool", ""))
            args = entry.data.get("args")
            rule = rules.get(tool)
            # a tool host from before the arguments were recorded: the rule cannot be checked
            known = isinstance(args, dict)
            args = args if isinstance(args, dict) else {}
            seen.calls.append(ToolUse(
                tool=tool, args=args, ok=True,
                approved_by=str(entry.data.get("approved_by", "")),
                needs_approval=bool(known and rule and rule.approval
                                    and holds(rule.approval, {"args": args})),
                gated=bool(rule and rule.approval),
                side_effect=bool(rule and rule.risk != "read")))


async def _reject_open(client: SwitchyardClient, seen: Observed) -> None:
    if seen.status != "escalated" or not seen.escalation_id:
        return
    with contextlib.suppress(LookupError, TimeoutError):  # decided meanwhile, by a person
        await client.decide(seen.escalation_id, "reject", reviewer=EVAL_REVIEWER,
                            note="a golden-set case of switchyard eval")
