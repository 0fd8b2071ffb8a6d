"""``kb_search``: BM25 search over the shipped policy and help articles."""

from __future__ import annotations

from pydantic import BaseModel, Field

from switchyard.tools.builtin.store import SupportStore
from switchyard.tools.contract import Tool, tool


class KbQuery(BaseModel):
    query: str = Field(max_length=4000)
    category: str | None = None
    limit: int = Field(default=3, ge=1, le=10)


class KbHit(BaseModel):
    article_id: str
    title: str
    category: str
    snippet: str  # the matching words in their context (FTS5's snippet, cut with "…")
    passage: str = ""  # the article's whole sentences nearest the query, to quote
    score: float


class KbHits(BaseModel):
    hits: list[KbHit]


def kb_search_tool(store: SupportStore) -> Tool:
    @tool(name="kb_search")
    async def kb_search(args: KbQuery) -> KbHits:
        """Search the knowledge base; returns passages with article ids for citation."""
        rows = store.search(args.query, args.category, args.limit)
        return KbHits(hits=[KbHit.model_validate(r) for r in rows])

    return kb_search
