"""The tool policy: validated, compiled into grants, enforced at workflow load and by tool hosts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.client import JetStreamContext

from switchyard.protocol import LimitExceededError, Subjects, Task, decode, grants
from switchyard.protocol.errors import ConfigError
from switchyard.supervisor import Supervisor, SupervisorConfig
from switchyard.supervisor.policy import load_policy, parse_policy
from switchyard.supervisor.workflow import builtin_workflow, parse_workflow

CLI = str(Path(sys.executable).parent / "switchyard")
POLICY = parse_policy("""
tools:
  kb_search: {risk: read}
  refund: {risk: write, limits: {amount: 100}, approval: "args.amount > `50`"}
roles:
  reader: {tools: [kb_search], calls_per_task: 3}
  clerk: {tools: [kb_search, refund], calls_per_task: 10}
""")


def test_policy_compiles_step_tools_into_the_narrowest_grant() -> None:
    wf = parse_workflow("name: w\nsteps: [{name: s, role: clerk, tools: [kb_search, refund], "
                        "tool_budget: 5, fallback_role: reader}]")
    step = wf.steps[0]
    clerk = POLICY.grantable(step, "clerk")
    assert (clerk.tools, clerk.budget, clerk.limits) == (
        ["kb_search", "refund"], 5, {"refund": {"amount": 100.0}})
    reader = POLICY.grantable(step, "reader")  # the fallback role gets only what it may use
    assert (reader.tools, reader.budget, reader.limits) == (["kb_search"], 3, {})
    assert POLICY.grantable(step, "stranger").tools == []  # unlisted roles get nothing


def test_policy_refuses_a_workflow_that_asks_for_more() -> None:
    greedy = parse_workflow("name: g\nsteps: [{name: s, role: reader, tools: [refund]}]")
    with pytest.raises(ConfigError, match=r"step 's' gives role 'reader' \['refund'\]"):
        POLICY.check_workflow(greedy)


@pytest.mark.parametrize("text, message", [
    ("roles: {r: {tools: [nope]}}", "does not define"),
    ("tools: {t: {approval: 'args.[['}}", "not valid JMESPath"),
    ("tools: {t: {risk: extreme}}", "risk"),
    ("roles: {'a.b': {}}", "not a valid subject token"),
])
def test_policy_validation(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_policy(text)


def test_builtin_policy_fits_the_support_workflow() -> None:
    policy = load_policy("support")
    policy.check_workflow(builtin_workflow("support"))
    assert policy.matrix()["retrieval"] == {"kb_search": "read"}
    assert policy.matrix()["action"]["propose_refund"] == "write approval"


def test_grant_limits_are_checked_per_argument(signer: grants.Signer) -> None:
    g = grants.Grant(id="g", workflow_id="w", task_id="t", role="clerk", tools=["refund"],
                     budget=1, issued_at=0, expires_at=1, issuer="", limits={"refund": {"amount": 100}})
    grants.check_limits(g, "refund", {"amount": 99.5})
    with pytest.raises(LimitExceededError, match="amount of 5000 exceeds the granted limit of 100"):
        grants.check_limits(g, "refund", {"amount": 5000})
    with pytest.raises(LimitExceededError):
        grants.check_limits(g, "refund", {"amount": "5000"})  # not a number: refused, not parsed


async def test_supervisor_mints_grants_from_the_policy(
    nc: Client, js: JetStreamContext, subjects: Subjects, seed: bytes, signer: grants.Signer,
) -> None:
    wf = parse_workflow("name: w\nsteps: [{name: s, role: clerk, tools: [kb_search, refund]}]")
    sup = Supervisor(SupervisorConfig(seed=seed, workflows={"w": wf}, subjects=subjects,
                                      policy=POLICY), nc=nc)
    await sup.start()
    try:
        from switchyard.client import SwitchyardClient

        await SwitchyardClient(nc, subjects).submit("w", {}, workflow_id="p1")
        psub = await js.pull_subscribe(subjects.task("clerk"), durable="clerk",
                                       stream=subjects.stream("tasks"))
        (msg,) = await psub.fetch(1, timeout=10)
        task = decode(msg.data, Task)
        g = grants.verify(task.grant, {signer.public_key}, time.time())
        assert (g.tools, g.budget, g.limits) == (["kb_search", "refund"], 10,
                                                 {"refund": {"amount": 100.0}})
        await psub.unsubscribe()
    finally:
        await sup.stop()
    greedy = parse_workflow("name: g\nsteps: [{name: s, role: reader, tools: [refund]}]")
    with pytest.raises(ConfigError, match="asks for more than the policy allows"):
        SupervisorConfig(seed=seed, workflows={"g": greedy}, policy=POLICY)


def test_cli_policy_check_prints_the_grant_matrix(tmp_path: Path) -> None:
    res = subprocess.run([CLI, "policy", "check", "--json"], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["matrix"]["compliance"] == {"lookup_customer": "read"}
    assert data["limits"] == {"propose_refund": {"amount": 50000.0}}
    bad = tmp_path / "p.yaml"
    bad.write_text("roles: {action: {tools: [teleport]}}\n")
    res = subprocess.run([CLI, "policy", "check", str(bad)], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert res.returncode == 1 and "teleport" in res.stderr
