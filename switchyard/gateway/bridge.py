"""A Switchyard role served by a remote A2A agent (``switchyard agent run --a2a URL --role R``).

The bridge takes the role's tasks like any agent (the grant checked, the result journaled) and
sends each task's input to the remote agent as one message, through a2a-sdk's own client. The
message id is the task id, so a redelivered task sends the same message (a Switchyard gateway
behind it runs it once). The reply becomes the result:

- ``completed``: the output is the artifacts' data parts merged (their text parts as
  ``text``), with ``a2a`` (the remote task, its state and the agent's name) beside them, so the
  exchange is in the journal; the confidence is the output's ``confidence_field`` when it is a
  number in [0, 1], else the fixed default;
- ``input-required``: the task goes to a person (``needs_human``), with the remote question;
- ``rejected``, ``failed``, ``canceled``: the step fails, not retried.

The remote agent receives no grant: the tools it uses are its own, outside Switchyard's policy,
ledger and approvals (see docs/a2a.md).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from a2a.client import A2ACardResolver, A2AClientError, ClientConfig, ClientFactory
from a2a.helpers import get_message_text
from a2a.types import Message, Role, SendMessageRequest, Task, TaskState
from google.protobuf.json_format import MessageToDict
from pydantic import BaseModel, ConfigDict

from switchyard.agents import Agent, NeedsHuman, Scored, TaskContext, ToolError
from switchyard.gateway.executor import data_part, whole
from switchyard.protocol.errors import ErrorCode


class Open(BaseModel):
    """Whatever the step's input or the remote reply holds."""

    model_config = ConfigDict(extra="allow")


def bridge(url: str, role: str, *, key: str = "", confidence: float = 0.8,
           confidence_field: str = "confidence", skill: str = "",
           timeout: float = 300.0) -> Agent:
    agent = Agent(role, version="1.0.0-a2a", description=f"a bridge to the A2A agent at {url}")
    remote: dict[str, Any] = {}

    async def client() -> Any:
        if "client" not in remote:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            http = httpx.AsyncClient(headers=headers, timeout=timeout)
            card = await A2ACardResolver(http, url).get_agent_card()
            remote.update(http=http, card=card, client=ClientFactory(
                ClientConfig(streaming=False, httpx_client=http)).create(card))
        return remote["client"]

    @agent.task
    async def call(inp: Open, ctx: TaskContext) -> Scored[Open]:
        try:
            return await exchange(inp, ctx)
        except (httpx.HTTPError, A2AClientError) as exc:  # down, refusing us, or not A2A
            remote.pop("client", None)  # the card is resolved again next time
            if (http := remote.pop("http", None)) is not None:
                await http.aclose()
            raise ToolError(f"the A2A agent at {url} did not answer: {exc}",
                            code=ErrorCode.TOOL_FAILED, retryable=True) from None

    async def exchange(inp: Open, ctx: TaskContext) -> Scored[Open]:
        a2a = await client()
        message = Message(role=Role.ROLE_USER, message_id=ctx.task.id,
                          parts=[data_part(json.loads(json.dumps(inp.model_dump())))])
        if skill:
            message.metadata.update({"skill": skill})
        task: Task | None = None
        reply: Message | None = None
        async for response in a2a.send_message(SendMessageRequest(message=message)):
            kind = response.WhichOneof("payload")
            if kind == "task":
                task = response.task
            elif kind == "message":
                reply = response.message
        name = remote["card"].name
        if task is None:  # a message-only answer
            text = get_message_text(reply) if reply is not None else ""
            return Scored(Open.model_validate({"text": text, "a2a": {
                "agent": name, "state": "message"}}), confidence=confidence)
        state = TaskState.Name(task.status.state).removeprefix("TASK_STATE_").lower()
        said = get_message_text(task.status.message) if task.status.HasField("message") else ""
        exchange = {"agent": name, "url": url, "task_id": task.id, "state": state}
        if task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED:
            asked = (MessageToDict(task.status.message.metadata)
                     if task.status.HasField("message") else {})
            where = f"its task {task.id}" + (f", escalation {asked['escalation_id']}"
                                             if asked.get("escalation_id") else "")
            raise NeedsHuman(f"the A2A agent {name} asks: {said or 'input required'} ({where})")
        if task.status.state != TaskState.TASK_STATE_COMPLETED:
            raise ToolError(f"the A2A agent {name} ended the task {state}: {said}".rstrip(": "),
                            code=ErrorCode.TOOL_FAILED, retryable=False)
        out: dict[str, Any] = {}
        texts = []
        for artifact in task.artifacts:
            for part in artifact.parts:
                content = part.WhichOneof("content")
                if content == "data":
                    found = whole(MessageToDict(part.data))
                    if isinstance(found, dict):
                        out.update(found)
                elif content == "text":
                    texts.append(part.text)
        if texts and "text" not in out:
            out["text"] = "\n".join(texts)
        score = out.get(confidence_field)
        stated = (float(score) if isinstance(score, int | float) and not isinstance(score, bool)
                  and 0 <= score <= 1 else confidence)
        return Scored(Open.model_validate({**out, "a2a": exchange}), confidence=stated)

    return agent
