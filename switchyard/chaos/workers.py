"""What ``switchyard chaos`` runs: a worker agent whose every step makes one side-effecting tool
call, and that tool, which is deliberately not idempotent itself: it appends the call's
idempotency key to a file (``SWITCHYARD_CHAOS_EFFECTS``) each time it runs, so a side effect done
twice shows up as a key written twice. Only the tool host's ledger stands between a redelivered
task and a duplicate.
"""

from __future__ import annotations

import os

from pydantic import BaseModel

from switchyard.agents import Agent, TaskContext
from switchyard.tools import CallContext, tool


class EffectArgs(BaseModel):
    workflow_id: str
    step: str


class EffectDone(BaseModel):
    written: str


@tool(name="record_effect", risk="write", side_effects=True, idempotent=False)
async def record_effect(args: EffectArgs, ctx: CallContext) -> EffectDone:
    """Append the call's idempotency key to the effects file (fsynced): one line per execution."""
    fd = os.open(os.environ["SWITCHYARD_CHAOS_EFFECTS"], os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                 0o600)
    try:
        os.write(fd, f"{ctx.idempotency_key}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return EffectDone(written=ctx.idempotency_key)


tools = [record_effect]


class Step(BaseModel):
    n: int = 0


class Stepped(BaseModel):
    n: int


worker = Agent("worker", version="1.0.0", description="chaos: one side effect per step")


@worker.task
async def work(inp: Step, ctx: TaskContext) -> Stepped:
    await ctx.call_tool("record_effect", {"workflow_id": ctx.task.workflow_id,
                                          "step": ctx.task.step})
    return Stepped(n=inp.n + 1)
