"""The final review by a language model: its checks and score, with the checks a model cannot be
trusted with kept as code (a ticket was opened, no personal data left, the length)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from switchyard.agents import Agent, Scored, TaskContext
from switchyard.agents.llm import models_of, prompt
from switchyard.agents.pii import find_pii
from switchyard.agents.reviewer import Answer, Verdict


class Judged(BaseModel):
    approved: bool
    score: float = Field(ge=0.0, le=1.0)
    failed_checks: list[str] = Field(max_length=10)


agent = Agent("reviewer", version="1.0.0", description="final answer check and score (LLM)")
PROMPT = prompt("reviewer")


@agent.task
async def review(answer: Answer, ctx: TaskContext) -> Scored[Verdict]:
    models = models_of(ctx, PROMPT)
    shown = (f"intent: {answer.intent}\ncitations: {', '.join(answer.citations) or 'none'}\n"
             f"reply:\n{answer.reply}")
    got = await models.structured(
        [{"role": "system", "content": PROMPT.text}, {"role": "user", "content": shown}],
        Judged, max_tokens=200)
    failed = [c[:120] for c in got.failed_checks]
    facts = {"a ticket was opened": bool(answer.ticket_id),
             "no personal data left": not find_pii(answer.reply),
             "reply is at most 2000 characters": len(answer.reply) <= 2000}
    failed += [name for name, ok in facts.items() if not ok and name not in failed]
    score = got.score if not failed else min(got.score, 1 - len(failed) / (len(failed) + 4))
    return Scored(
        Verdict(approved=got.approved and not failed, score=round(score, 3),
                failed_checks=failed, reply=answer.reply, citations=answer.citations,
                ticket_id=answer.ticket_id),
        confidence=round(score, 3))
