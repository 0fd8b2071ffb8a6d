"""Reviewer: validates the final answer, scores it, and marks what needs a person.

The score is the share of checks passed; under the workflow's threshold the answer goes to a
person before it is sent.
"""

from __future__ import annotations

from pydantic import BaseModel

from switchyard.agents import Agent, Scored, TaskContext
from switchyard.agents.pii import find_pii

CITED_INTENTS = frozenset({"billing", "technical", "account"})


class Answer(BaseModel):
    reply: str
    intent: str = "other"
    citations: list[str] = []
    ticket_id: str | None = None


class Verdict(BaseModel):
    approved: bool
    score: float
    failed_checks: list[str]
    reply: str
    citations: list[str]
    ticket_id: str | None


agent = Agent("reviewer", version="1.0.0", description="final answer check and score")


@agent.task
async def review(answer: Answer, ctx: TaskContext) -> Scored[Verdict]:
    checks = {
        "reply is not empty": bool(answer.reply.strip()),
        "reply is at most 2000 characters": len(answer.reply) <= 2000,
        "reply greets the customer": answer.reply.lstrip().lower().startswith("hello"),
        # when the knowledge base had something to say (it is in English: a ticket in another
        # language may find nothing)
        "reply cites the knowledge base": answer.intent not in CITED_INTENTS
        or not answer.citations or any(c in answer.reply for c in answer.citations),
        "reply has no cut-off text": "…" not in answer.reply
        and not any(line.rstrip().endswith("...") for line in answer.reply.splitlines()),
        "a ticket was opened": bool(answer.ticket_id),
        "no personal data left": not find_pii(answer.reply),
    }
    failed = [name for name, ok in checks.items() if not ok]
    score = round(1 - len(failed) / len(checks), 3)
    return Scored(
        Verdict(approved=not failed, score=score, failed_checks=failed, reply=answer.reply,
                citations=answer.citations, ticket_id=answer.ticket_id),
        confidence=score,
    )
