"""A small OpenAI-compatible server for the tests: real HTTP on 127.0.0.1 (Starlette under
uvicorn, in a thread of the test process), deterministic, and told what to do.

Per model name it answers, in this order:

1. the next scripted behaviour queued for that model (``script``): a status with headers
   (``{"status": 429, "headers": {"Retry-After": "1"}}``), a delay (``{"delay_s": 5}``), a body
   that is not JSON (``{"raw": "<html>"}``), given content (``{"content": "..."}``), given JSON
   (``{"json": {...}}``), tool calls (``{"tool_calls": [{"name": ..., "arguments": {...}}]}``);
2. else what ``answer`` set for it: tool calls while the conversation has no tool result yet
   (when tools are offered), and per requested schema title the JSON to answer;
3. else an echo of the last user message.

Every request is recorded (``requests``). Streaming (``stream: true``) sends the same reply as
server-sent events, content in pieces of four characters, and usage last when asked for.
Usage is deterministic: a token per four characters.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


class Stub:
    def __init__(self) -> None:
        self.scripts: dict[str, deque[dict[str, Any]]] = defaultdict(deque)
        self.answers: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        # models that refuse OpenAI's json_schema form with a 500 naming response_format, as
        # llama-cpp-python's server does
        self.refuse_json_schema: set[str] = set()
        self.lock = threading.Lock()
        self.url = ""

    # what tests call -----------------------------------------------------------------------

    def script(self, model: str, *behaviours: dict[str, Any]) -> None:
        with self.lock:
            self.scripts[model].extend(behaviours)

    def answer(self, model: str, *, by_schema: dict[str, Any] | None = None,
               tool_calls: list[dict[str, Any]] | None = None) -> None:
        with self.lock:
            self.answers[model] = {"by_schema": by_schema or {}, "tool_calls": tool_calls or []}

    def calls(self, model: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if model is None or r["model"] == model]

    def reset(self) -> None:
        with self.lock:
            self.scripts.clear()
            self.answers.clear()
            self.refuse_json_schema.clear()
            self.requests.clear()

    # the server ----------------------------------------------------------------------------

    async def completions(self, request: Request) -> Response:
        body = await request.json()
        model = str(body.get("model", ""))
        with self.lock:
            self.requests.append({"model": model, "body": body, "at": time.time(),
                                  "authorization": request.headers.get("authorization", "")})
            behaviour = self.scripts[model].popleft() if self.scripts[model] else None
        if model in self.refuse_json_schema and \
                (body.get("response_format") or {}).get("type") == "json_schema":
            return JSONResponse({"error": {"message": "1 validation error: ('body', "
                                           "'response_format', 'type') Input should be 'text' "
                                           "or 'json_object'"}}, status_code=500)
        if behaviour is not None:
            if behaviour.get("delay_s"):
                await asyncio.sleep(behaviour["delay_s"])  # the stub is slow on purpose
            if "status" in behaviour:
                return JSONResponse({"error": {"message": behaviour.get("message", "scripted")}},
                                    status_code=behaviour["status"],
                                    headers=behaviour.get("headers"))
            if "raw" in behaviour:
                return Response(behaviour["raw"], media_type="application/json")
        message = self._message(model, body, behaviour or {})
        prompt = len(json.dumps(body.get("messages", []))) // 4
        usage = {"prompt_tokens": prompt,
                 "completion_tokens": len(json.dumps(message)) // 4 + 1}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        finish = "tool_calls" if message.get("tool_calls") else "stop"
        if body.get("stream"):
            include = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(_events(model, message, finish, usage if include else None),
                                     media_type="text/event-stream")
        return JSONResponse({
            "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "model": model,
            "created": int(time.time()),
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage})

    def _message(self, model: str, body: dict[str, Any], behaviour: dict[str, Any]
                 ) -> dict[str, Any]:
        calls = behaviour.get("tool_calls")
        content: str | None = behaviour.get("content")
        if "json" in behaviour:
            content = json.dumps(behaviour["json"])
        if calls is None and content is None:
            known = self.answers.get(model, {})
            answered = any(m.get("role") == "tool" for m in body.get("messages", []))
            if body.get("tools") and known.get("tool_calls") and not answered:
                calls = known["tool_calls"]
            else:
                title = _schema_title(body.get("response_format"))
                if title in known.get("by_schema", {}):
                    content = json.dumps(known["by_schema"][title])
                else:
                    users = [m for m in body.get("messages", []) if m.get("role") == "user"]
                    content = f"echo: {users[-1]['content'] if users else ''}"
        if calls:
            return {"role": "assistant", "content": None, "tool_calls": [
                {"id": f"call_{i}", "type": "function",
                 "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])
                              if not isinstance(c["arguments"], str) else c["arguments"]}}
                for i, c in enumerate(calls)]}
        return {"role": "assistant", "content": content}


def _schema_title(response_format: Any) -> str:
    if not isinstance(response_format, dict):
        return ""
    if response_format.get("type") == "json_schema":
        return str((response_format.get("json_schema") or {}).get("name", ""))
    return str((response_format.get("schema") or {}).get("title", ""))


async def _events(model: str, message: dict[str, Any], finish: str,
                  usage: dict[str, int] | None) -> AsyncIterator[bytes]:
    def event(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        chunk = {"object": "chat.completion.chunk", "model": model,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
        return f"data: {json.dumps(chunk)}\n\n".encode()

    yield event({"role": "assistant"})
    text = message.get("content") or ""
    for i in range(0, len(text), 4):
        yield event({"content": text[i:i + 4]})
    for i, call in enumerate(message.get("tool_calls") or []):
        fn = call["function"]
        yield event({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                     "function": {"name": fn["name"], "arguments": ""}}]})
        yield event({"tool_calls": [{"index": i, "function": {"arguments": fn["arguments"]}}]})
    yield event({}, finish)
    if usage is not None:
        yield f"data: {json.dumps({'choices': [], 'usage': usage, 'model': model})}\n\n".encode()
    yield b"data: [DONE]\n\n"


class StubServer:
    """The stub served on 127.0.0.1 at a free port, in a thread, until ``stop``."""

    def __init__(self) -> None:
        self.stub = Stub()
        app = Starlette(routes=[Route("/v1/chat/completions", self.stub.completions,
                                      methods=["POST"])])
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0,
                                                     log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self) -> Stub:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the stub server did not start")
            time.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.stub.url = f"http://127.0.0.1:{port}/v1"
        return self.stub

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
