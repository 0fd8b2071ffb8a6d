"""An A2A agent written with a2a-sdk's own server, run as a process of its own by the bridge's
tests: it answers a data part's ``text`` with an artifact ``{"answer", "confidence", "words"}``,
asks for input when the text says "ask", and rejects one that says "refuse".

    python -m tests.gateway.remote_agent PORT
"""

from __future__ import annotations

import sys

import uvicorn
from a2a.helpers import get_message_text, new_task_from_user_message, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandlerV2
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill, Part
from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Value
from starlette.applications import Starlette


class Words(AgentExecutor):
    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.message is not None
        task = context.current_task or new_task_from_user_message(context.message)
        if context.current_task is None:
            await event_queue.enqueue_event(task)
        up = TaskUpdater(event_queue, task.id, task.context_id)
        data: dict[str, object] = {}
        for part in context.message.parts:
            if part.WhichOneof("content") == "data":
                data.update(MessageToDict(part.data))
        text = str(data.get("text") or get_message_text(context.message))
        await up.start_work(up.new_agent_message([new_text_part("counting")]))
        if "refuse" in text:
            await up.reject(up.new_agent_message([new_text_part("I will not count that")]))
            return
        if "ask" in text:
            await up.requires_input(up.new_agent_message([new_text_part("which words?")]))
            return
        value = Value()
        value.struct_value.update({"answer": f"{len(text.split())} words", "confidence": 0.95,
                                   "words": len(text.split())})
        await up.add_artifact([Part(data=value)], name="count")
        await up.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.task_id is not None and context.context_id is not None
        await TaskUpdater(event_queue, context.task_id, context.context_id).cancel()


def main() -> None:
    port = int(sys.argv[1])
    url = f"http://127.0.0.1:{port}/"
    card = AgentCard(
        name="Word counter", description="Counts words.", version="1.0",
        supported_interfaces=[AgentInterface(url=url, protocol_binding="JSONRPC",
                                             protocol_version="1.0")],
        capabilities=AgentCapabilities(streaming=True), default_input_modes=["text/plain"],
        default_output_modes=["application/json"],
        skills=[AgentSkill(id="count", name="count", description="counts words", tags=["t"])])
    handler = DefaultRequestHandlerV2(agent_executor=Words(), task_store=InMemoryTaskStore(),
                                      agent_card=card)
    app = Starlette(routes=[*create_agent_card_routes(card),
                            *create_jsonrpc_routes(handler, rpc_url="/")])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
