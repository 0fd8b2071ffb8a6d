"""Retrieval: passages with citations from the knowledge base (SQLite FTS5, BM25), through the
``kb_search`` tool, filtered by the triaged intent."""

from __future__ import annotations

from pydantic import BaseModel, Field

from switchyard.agents import Agent, Scored, TaskContext
from switchyard.tools.builtin.kb import KbHits


class Query(BaseModel):
    text: str = Field(min_length=1, max_length=20_000)
    intent: str = "other"


class Passage(BaseModel):
    article_id: str
    title: str
    snippet: str
    passage: str = ""
    score: float


class Passages(BaseModel):
    passages: list[Passage]
    citations: list[str]


agent = Agent("retrieval", version="1.0.0", description="cited passages from the knowledge base")


@agent.task
async def retrieve(query: Query, ctx: TaskContext) -> Scored[Passages]:
    ctx.local_model = "retrieval-scorer"  # its entry in the model catalogue
    found = await ctx.call_tool("kb_search", {"query": query.text, "category": query.intent},
                                KbHits)
    hits = found.hits
    if not hits:  # nothing in the intent's own articles: search them all
        hits = (await ctx.call_tool("kb_search", {"query": query.text}, KbHits)).hits
    passages = [Passage.model_validate(h.model_dump()) for h in hits]
    # BM25 scores are unbounded; a top score of 3 or more is a solid keyword match here.
    confidence = min(1.0, passages[0].score / 3.0) if passages else 0.0
    return Scored(
        Passages(passages=passages, citations=[p.article_id for p in passages]),
        confidence=round(max(confidence, 0.05), 3),
    )
