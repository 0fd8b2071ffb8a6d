"""Triage: intent, severity and sensitivity of a ticket, with a calibrated confidence.

A TF-IDF + logistic-regression classifier (scikit-learn), calibrated with Platt scaling over
cross-validation folds, trained at start-up from the labelled tickets shipped in
``data/tickets.csv`` (about a quarter of a second). The confidence is the calibrated probability of
the chosen intent, so ambiguous tickets really score low and the workflow's threshold sends them
to a person.
"""

from __future__ import annotations

import asyncio
import csv
from functools import lru_cache
from importlib import resources

from pydantic import BaseModel, Field
from sklearn.calibration import CalibratedClassifierCV
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline

from switchyard.agents import Agent, Scored, TaskContext
from switchyard.agents.pii import find_pii

SENSITIVE_INTENTS = frozenset({"legal", "account"})


class Ticket(BaseModel):
    text: str = Field(min_length=1, max_length=20_000)
    customer_email: str | None = None


class Triage(BaseModel):
    intent: str
    severity: str
    sensitivity: str
    scores: dict[str, float]


def labelled_tickets() -> list[dict[str, str]]:
    text = resources.files("switchyard.agents").joinpath("data", "tickets.csv").read_text()
    return list(csv.DictReader(text.splitlines()))


def _pipeline(calibrated: bool) -> Pipeline:
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    lr = LogisticRegression(C=4.0, max_iter=2000)
    clf = CalibratedClassifierCV(lr, method="sigmoid", cv=5) if calibrated else lr
    return make_pipeline(vectorizer, clf)


@lru_cache(maxsize=1)
def models() -> tuple[Pipeline, Pipeline]:
    """(intent model, severity model), trained once per process."""
    rows = labelled_tickets()
    texts = [r["text"] for r in rows]
    intent = _pipeline(calibrated=True).fit(texts, [r["intent"] for r in rows])
    severity = _pipeline(calibrated=False).fit(texts, [r["severity"] for r in rows])
    return intent, severity


def classify(text: str) -> tuple[Triage, float]:
    intent_model, severity_model = models()
    probs = intent_model.predict_proba([text])[0]
    classes = list(intent_model.classes_)
    best = int(probs.argmax())
    intent = classes[best]
    severity = str(severity_model.predict([text])[0])
    sensitive = intent in SENSITIVE_INTENTS or bool(find_pii(text))
    result = Triage(
        intent=intent,
        severity=severity,
        sensitivity="high" if sensitive else "normal",
        scores={c: round(float(p), 4) for c, p in zip(classes, probs, strict=True)},
    )
    return result, float(probs[best])


agent = Agent("triage", version="1.0.0", description="intent, severity and sensitivity")


@agent.on_startup
async def train() -> None:
    await asyncio.to_thread(models)


@agent.task
async def triage(ticket: Ticket, ctx: TaskContext) -> Scored[Triage]:
    ctx.local_model = "triage-classifier"  # its entry in the model catalogue
    result, confidence = classify(ticket.text)
    ctx.log.info("triage.classified", intent=result.intent, confidence=round(confidence, 3))
    return Scored(result, confidence=confidence)
