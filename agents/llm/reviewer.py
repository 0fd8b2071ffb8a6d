"""The final review by a language model: it judges what needs judgement (a greeting, citations,
tone); the checks a model cannot be trusted with stay code (not empty, the length, a ticket was
opened, no personal data left). The score is the share of all checks passed, so it means the
same as the reference reviewer's."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from switchyard.agents import Agent, Scored, TaskContext
from switchyard.agents.llm import models_of, prompt
from switchyard.agents.pii import find_pii
from switchyard.agents.reviewer import CITED_INTENTS, Answer, Verdict

Judgement = Literal["reply greets the customer", "reply cites the knowledge base",
                    "reply is polite and on topic"]


class Judged(BaseModel):
    """What the model must answer: the checks the reply fails, by name."""

    failed_checks: list[Judgement] = Field(max_length=3)


agent = Agent("reviewer", version="1.0.0", description="final answer check and score (LLM)")
PROMPT = prompt("reviewer")


@agent.task
async def review(answer: Answer, ctx: TaskContext) -> Scored[Verdict]:
    models = models_of(ctx, PROMPT)
    shown = (f"intent: {answer.intent}\ncitations: {', '.join(answer.citations) or 'none'}\n"
             f"reply:\n{answer.reply}")
    got = await models.structured(
        [{"role": "system", "content": PROMPT.text}, {"role": "user", "content": shown}],
        Judged, max_tokens=120)
    judged: list[str] = list(dict.fromkeys(got.failed_checks))
    if answer.intent not in CITED_INTENTS and "reply cites the knowledge base" in judged:
        judged.remove("reply cites the knowledge base")  # only those intents need citations
    facts = {"reply is not empty": bool(answer.reply.strip()),
             "reply is at most 2000 characters": len(answer.reply) <= 2000,
             "a ticket was opened": bool(answer.ticket_id),
             "no personal data left": not find_pii(answer.reply)}
    failed = judged + [name for name, ok in facts.items() if not ok]
    score = round(1 - len(failed) / (len(facts) + 3), 3)
    return Scored(
        Verdict(approved=not failed, score=score, failed_checks=failed, reply=answer.reply,
                citations=answer.citations, ticket_id=answer.ticket_id),
        confidence=score)
