"""The seam for language models: an OpenAI Chat Completions client over httpx.

``OpenAICompatibleModel`` speaks ``POST {base_url}/chat/completions`` to any compatible server
(vLLM, Ollama, the llama.cpp server, a LiteLLM proxy, a hosted API): messages, structured output
(``response_format`` with a JSON schema), tool calling (``tools`` in, ``tool_calls`` out, tool
results back as ``role: tool`` messages), and streaming (server-sent events, read with httpx-sse).

A failed attempt (connection error, timeout, 429 or 5xx) is tried again up to ``attempts`` times,
waiting what ``Retry-After`` says when the server says it (capped), else exponential backoff with
full jitter (tenacity). Every attempt passes the endpoint's circuit breaker. What cannot succeed
raises ``ModelError``: a 4xx, a body that is not a chat completion, or the attempts used up.
Every reply carries its usage and latency. The API key goes into the ``Authorization`` header and
nowhere else: no message, log line or ``repr`` of this module contains it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import httpx
from httpx_sse import SSEError, aconnect_sse
from opentelemetry.trace import SpanKind
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
)
from tenacity.stop import StopBaseT
from tenacity.wait import wait_exponential_jitter

from switchyard.protocol.bus import tracing
from switchyard.protocol.errors import ErrorCode, ModelError, ToolError
from switchyard.protocol.messages import Usage
from switchyard.tools.breaker import Breakers

Message = dict[str, Any]
OnDelta = Callable[[str], Awaitable[None]]
MAX_RETRY_AFTER_S = 60.0  # a longer wait than this is not waited for: the next model is tried


@dataclass(frozen=True, slots=True)
class ToolCallRequest:
    """A tool call the model asks for: ``arguments`` is the JSON text it wrote (unparsed: it
    may not be JSON, and what to do then is the caller's decision)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ModelReply:
    text: str
    usage: Usage
    tool_calls: tuple[ToolCallRequest, ...] = ()
    finish_reason: str = ""
    latency_ms: float = 0.0
    message: Message = field(default_factory=dict)  # the assistant message, for the history


class ModelClient(Protocol):
    async def chat(self, messages: list[Message], **options: Any) -> ModelReply: ...


class OpenAICompatibleModel:
    """Chat completions of one model at one endpoint."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str = "",
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        attempts: int = 3,
        backoff_s: float = 0.5,
        breakers: Breakers | None = None,
        max_retry_after_s: float = MAX_RETRY_AFTER_S,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._key = api_key  # only to take it out of what a server says back
        self.model = model
        self.endpoint = base_url.rstrip("/")
        self.breakers = breakers or Breakers()
        self.attempts = attempts
        self._backoff = wait_exponential_jitter(multiplier=backoff_s, max=30.0, jitter=backoff_s)
        self._max_retry_after = max_retry_after_s
        self._http = httpx.AsyncClient(
            base_url=self.endpoint, headers=headers, timeout=timeout, transport=transport)

    def __repr__(self) -> str:
        return f"OpenAICompatibleModel({self.endpoint!r}, {self.model!r})"

    @property
    def breaker_name(self) -> str:
        return f"{self.endpoint}#{self.model}"

    async def chat(self, messages: list[Message], **options: Any) -> ModelReply:
        """One completion (see ``_chat``) as the span ``chat <model>``, with the GenAI
        conventions' usage attributes; the messages only where the operator opted in
        (``tracing.record_contents``)."""
        with tracing.TRACER.start_as_current_span(
                f"chat {self.model}", kind=SpanKind.CLIENT, attributes={
                    tracing.GEN_AI_OPERATION: "chat", tracing.GEN_AI_PROVIDER: "openai",
                    tracing.GEN_AI_REQUEST_MODEL: self.model,
                    "server.address": self._http.base_url.host}) as span:
            tracing.set_content(span, tracing.GEN_AI_INPUT_MESSAGES, messages)
            reply = await self._chat(messages, **options)
            tracing.set_content(span, tracing.GEN_AI_OUTPUT_MESSAGES, [reply.message])
            span.set_attributes({tracing.GEN_AI_RESPONSE_MODEL: reply.usage.model,
                                 tracing.GEN_AI_INPUT_TOKENS: reply.usage.input_tokens,
                                 tracing.GEN_AI_OUTPUT_TOKENS: reply.usage.output_tokens})
            return reply

    async def _chat(
        self,
        messages: list[Message],
        *,
        response_format: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        on_delta: OnDelta | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> ModelReply:
        """One completion. With ``on_delta`` the reply is streamed and each piece of text is
        handed to it as it arrives; the reply returned is the whole of it either way.
        ``timeout`` bounds this call, all its attempts (default: the client's per attempt)."""
        body: dict[str, Any] = {"model": self.model, "messages": messages, **options}
        if response_format is not None:
            body["response_format"] = response_format
        if tools:
            body["tools"] = tools
            if tool_choice is not None:
                body["tool_choice"] = tool_choice
        if on_delta is not None:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        started = time.perf_counter()
        stop: StopBaseT = stop_after_attempt(self.attempts)
        if timeout is not None:
            stop = stop_after_attempt(self.attempts) | stop_after_delay(timeout)
        per_attempt = httpx.Timeout(timeout) if timeout is not None else None
        retrying = AsyncRetrying(
            stop=stop, wait=self._wait, reraise=True,
            retry=retry_if_exception(lambda e: _transient(e, self._max_retry_after)))
        try:
            async for attempt in retrying:
                with attempt, self.breakers.guard(self.breaker_name,
                                                  f"model {self.model} at {self.endpoint}"):
                    if on_delta is None:
                        data = await self._complete(body, per_attempt)
                    else:
                        data = await self._stream(body, on_delta, per_attempt)
        except httpx.HTTPStatusError as exc:
            raise self._redacted(_status_error(exc, self.model, self.attempts)) from None
        except ModelError as exc:
            raise self._redacted(exc) from None
        except httpx.TransportError as exc:
            code = ErrorCode.TIMEOUT if isinstance(exc, httpx.TimeoutException) else \
                ErrorCode.MODEL_FAILED
            raise ModelError(f"model {self.model} at {self.endpoint}: "
                             f"{type(exc).__name__} after {self.attempts} attempt(s)",
                             code=code, retryable=True) from None
        except ToolError as exc:  # the breaker is open
            raise ModelError(exc.message, code=exc.code, retryable=True) from None
        return _reply(data, self.model, (time.perf_counter() - started) * 1000)

    def _redacted(self, exc: ModelError) -> ModelError:
        """``exc`` without the key, should the server have echoed it (some quote the header)."""
        if self._key and self._key in exc.message:
            exc.message = exc.message.replace(self._key, "[redacted]")
            exc.args = (exc.message,)
        return exc

    async def _complete(self, body: dict[str, Any],
                        timeout: httpx.Timeout | None = None) -> dict[str, Any]:
        response = await self._http.post("/chat/completions", json=body,
                                         timeout=timeout or httpx.USE_CLIENT_DEFAULT)
        _raise_for_status(response, self.model, self.attempts)
        try:
            data = response.json()
        except ValueError:
            raise ModelError(f"model {self.model}: the reply is not JSON "
                             f"({response.text[:80]!r})") from None
        if not isinstance(data, dict):
            raise ModelError(f"model {self.model}: the reply is not a JSON object")
        return data

    async def _stream(self, body: dict[str, Any], on_delta: OnDelta,
                      timeout: httpx.Timeout | None = None) -> dict[str, Any]:
        """Read the event stream into what a non-streamed reply would have been."""
        text: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        data: dict[str, Any] = {"choices": [{}]}
        finish = ""
        async with aconnect_sse(self._http, "POST", "/chat/completions", json=body,
                                timeout=timeout or httpx.USE_CLIENT_DEFAULT) as source:
            if source.response.is_error:
                await source.response.aread()  # what the server said, for the error
                _raise_for_status(source.response, self.model, self.attempts)
            try:
                async for event in source.aiter_sse():
                    if event.data.strip() == "[DONE]":
                        break
                    try:
                        chunk = json.loads(event.data)
                    except ValueError:
                        raise ModelError(f"model {self.model}: a streamed event is not JSON "
                                         f"({event.data[:80]!r})") from None
                    if chunk.get("usage"):
                        data["usage"] = chunk["usage"]
                    data["model"] = chunk.get("model", data.get("model"))
                    for choice in chunk.get("choices") or []:
                        delta = choice.get("delta") or {}
                        finish = choice.get("finish_reason") or finish
                        if delta.get("content"):
                            text.append(delta["content"])
                            await on_delta(delta["content"])
                        for call in delta.get("tool_calls") or []:
                            slot = calls.setdefault(int(call.get("index", 0)), {
                                "id": "", "type": "function",
                                "function": {"name": "", "arguments": ""}})
                            slot["id"] = call.get("id") or slot["id"]
                            fn = call.get("function") or {}
                            slot["function"]["name"] += fn.get("name") or ""
                            slot["function"]["arguments"] += fn.get("arguments") or ""
            except SSEError as exc:
                raise ModelError(f"model {self.model}: not an event stream ({exc})") from None
        message: dict[str, Any] = {"role": "assistant", "content": "".join(text)}
        if calls:
            message["tool_calls"] = [calls[i] for i in sorted(calls)]
        data["choices"] = [{"message": message, "finish_reason": finish}]
        return data

    def _wait(self, state: RetryCallState) -> float:
        """What the server asked for in ``Retry-After`` (seconds or a date), else backoff."""
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, httpx.HTTPStatusError):
            after = retry_after(exc.response.headers.get("retry-after"))
            if after is not None:
                return min(after, self._max_retry_after)
        return float(self._backoff(state))

    async def aclose(self) -> None:
        await self._http.aclose()


def retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None if absent or
    not understood."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _transient(exc: BaseException, max_retry_after: float = MAX_RETRY_AFTER_S) -> bool:
    """Worth another try: the endpoint was unreachable, slow, overloaded or failing (and, for
    a 429, asks for no longer a wait than ``max_retry_after``)."""
    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        if _names_response_format(exc.response):
            return False  # the request's form is refused (some servers say so with a 500)
        if status == 429:
            after = retry_after(exc.response.headers.get("retry-after"))
            return after is None or after <= max_retry_after
        return status >= 500
    return isinstance(exc, httpx.TransportError)


def _raise_for_status(response: httpx.Response, model: str, attempts: int) -> None:
    """An answer that says the request itself is wrong (a 4xx but 429, or a refused
    ``response_format``) is ``ModelError`` at once: not retried, and no fault of the endpoint's
    for its breaker. The rest raise ``HTTPStatusError`` for the retries to judge."""
    try:
        response.raise_for_status()
    except httpx.HTTPStatusError as exc:
        status = response.status_code
        if (400 <= status < 500 and status != 429) or _names_response_format(response):
            raise _status_error(exc, model, attempts, transient=False) from None
        raise


def _names_response_format(response: httpx.Response) -> bool:
    try:
        return "response_format" in response.text
    except httpx.ResponseNotRead:
        return False


def _status_error(exc: httpx.HTTPStatusError, model: str, attempts: int, *,
                  transient: bool = True) -> ModelError:
    status = exc.response.status_code
    if status in (401, 403):  # what a server says then may echo (part of) the key: not kept
        return ModelError(f"model {model} answered {status}: the API key was refused "
                          "(SWITCHYARD_MODEL_API_KEY, or the catalogue entry's api_key_env)",
                          status=status)
    try:
        detail = exc.response.json().get("error", {})
        detail = detail.get("message", "") if isinstance(detail, dict) else str(detail)
    except (ValueError, AttributeError, httpx.ResponseNotRead):
        detail = ""
    transient = transient and (status == 429 or status >= 500)
    return ModelError(
        f"model {model} answered {status}"
        + (f" after {attempts} attempt(s)" if transient else "") + (f": {detail}" if detail else ""),
        retryable=transient, status=status)


def _reply(data: dict[str, Any], model: str, latency_ms: float) -> ModelReply:
    try:
        choice = data["choices"][0]
        message = choice["message"]
        calls = tuple(
            ToolCallRequest(id=str(c.get("id") or f"call_{i}"), name=str(c["function"]["name"]),
                            arguments=str(c["function"].get("arguments") or ""))
            for i, c in enumerate(message.get("tool_calls") or []))
        usage = data.get("usage") or {}
        return ModelReply(
            text=str(message.get("content") or ""),
            usage=Usage(input_tokens=int(usage.get("prompt_tokens") or 0),
                        output_tokens=int(usage.get("completion_tokens") or 0),
                        model=str(data.get("model") or model), calls=1,
                        latency_ms=round(latency_ms, 3)),
            tool_calls=calls, finish_reason=str(choice.get("finish_reason") or ""),
            latency_ms=round(latency_ms, 3),
            message={k: v for k, v in message.items() if k in ("role", "content", "tool_calls")},
        )
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ModelError(f"model {model}: the reply is not a chat completion "
                         f"({type(exc).__name__}: {exc})") from None
