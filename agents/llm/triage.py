"""Triage by a language model: intent, severity, sensitivity and the model's own confidence.

The personal-data scan, the sensitive intents and the rules' flags (``rules.flags``: security
incidents, instructions aimed at the agents, requests for another person's data, legal matters)
still apply after the model: it can mark a ticket sensitive, never make one that is not so, and
what the rules send to a person goes there whatever the model says.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from switchyard.agents import Agent, Scored, TaskContext
from switchyard.agents.llm import models_of, prompt
from switchyard.agents.pii import find_pii
from switchyard.agents.rules import LEGAL, LEGAL_THREAT, SECURITY, flags
from switchyard.agents.text import plain_text
from switchyard.agents.triage import RULE_CONFIDENCE, SENSITIVE_INTENTS, Ticket, Triage


class Classified(BaseModel):
    """What the model must answer. Its confidence is a word, not a number: models state a
    level more reliably than a probability, and a grammar-constrained server (llama.cpp's) can
    enforce an enum where it cannot enforce a number's range."""

    intent: Literal["billing", "technical", "account", "legal", "other"]
    severity: Literal["low", "normal", "high"]
    sensitivity: Literal["normal", "high"]
    confidence: Literal["low", "medium", "high"]


# what each stated level counts as against the step's threshold (0.5 in the support workflow)
CONFIDENCE = {"low": 0.3, "medium": 0.6, "high": 0.9}


agent = Agent("triage", version="1.0.0", description="intent, severity and sensitivity (LLM)")
PROMPT = prompt("triage")


@agent.task
async def triage(ticket: Ticket, ctx: TaskContext) -> Scored[Triage]:
    models = models_of(ctx, PROMPT)
    got = await models.structured(
        [{"role": "system", "content": PROMPT.text}, {"role": "user", "content": ticket.text}],
        Classified, max_tokens=120, stream=True)
    found = flags(ticket.text, plain_text(ticket.text), sender=ticket.customer_email)
    intent = "legal" if LEGAL in found else got.intent
    sensitive = (got.sensitivity == "high" or intent in SENSITIVE_INTENTS
                 or bool(find_pii(ticket.text)) or bool(found))
    result = Triage(intent=intent,
                    severity="high" if LEGAL_THREAT in found or SECURITY in found else got.severity,
                    sensitivity="high" if sensitive else "normal",
                    scores={got.intent: CONFIDENCE[got.confidence]}, flags=found)
    confidence = CONFIDENCE[got.confidence]
    return Scored(result, confidence=max(confidence, RULE_CONFIDENCE) if found else confidence)
