"""A deliberately degraded triage, for the quality gate's test: version 1.0.1-degraded trusts
its classifier twice as much as 1.0.0 does (as if the step's threshold were halved) and has
lost the rules that send sensitive tickets to a person."""

from __future__ import annotations

import asyncio

from switchyard.agents import Agent, Scored, TaskContext
from switchyard.agents import triage as live

agent = Agent("triage", version="1.0.1-degraded", description="triage, degraded")


@agent.on_startup
async def train() -> None:
    await asyncio.to_thread(live.models)


@agent.task
async def triage(ticket: live.Ticket, ctx: TaskContext) -> Scored[live.Triage]:
    result, confidence = live.classify(ticket.text, ticket.customer_email)
    return Scored(result.model_copy(update={"flags": []}), confidence=min(1.0, 2 * confidence))
