"""The LangGraph peer rows of ``switchyard bench``: a five-node graph with trivial nodes, in one
process, without a checkpointer, with its in-memory checkpointer, and with its SQLite one
(durable, beside Switchyard with ``sync_interval: always``). Needs the ``bench`` extra."""

from __future__ import annotations

import os
import tempfile
import uuid
from itertools import pairwise
from pathlib import Path
from typing import Any, TypedDict

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import END, START, StateGraph

from switchyard.bench.drivers import Driver
from switchyard.bench.run import Row, measure


class _State(TypedDict):
    payload: str
    n: int


def _graph() -> StateGraph:  # type: ignore[type-arg, unused-ignore]
    graph = StateGraph(_State)
    names = [f"hop{i}" for i in range(1, 6)]
    for name in names:
        graph.add_node(name, lambda s: {"n": s["n"] + 1})
    graph.add_edge(START, names[0])
    for a, b in pairwise(names):
        graph.add_edge(a, b)
    graph.add_edge(names[-1], END)
    return graph


class _GraphDriver(Driver):
    def __init__(self, app: Any, checkpointed: bool) -> None:
        self.app = app
        self.checkpointed = checkpointed

    async def one(self, i: int) -> None:
        config = {"configurable": {"thread_id": uuid.uuid4().hex}} if self.checkpointed else None
        out = await self.app.ainvoke({"payload": "x" * 1024, "n": 0}, config)
        assert out["n"] == 5


async def langgraph_rows(count: int, windows: int) -> list[Row]:
    rows = []
    pids = {"langgraph": os.getpid()}
    for name, saver in (("langgraph", None), ("langgraph+memory", InMemorySaver())):
        app = _graph().compile(checkpointer=saver)
        row = await measure(name, "-", _GraphDriver(app, saver is not None), pids,
                            inflight=64, count=count, windows=windows)
        rows.append(row)
    with tempfile.TemporaryDirectory() as tmp:
        async with AsyncSqliteSaver.from_conn_string(str(Path(tmp) / "lg.db")) as sqlite:
            app = _graph().compile(checkpointer=sqlite)
            rows.append(await measure("langgraph+sqlite", "durable", _GraphDriver(app, True), pids,
                                      inflight=64, count=max(100, count // 4), windows=windows))
    for row in rows:  # the graph runs inside the benchmark process: count it once
        row.cpu_us_per_workflow.pop("bench", None)
    return rows
