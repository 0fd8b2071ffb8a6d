"""The seam for language models.

Reference agents work without any model API. An agent that wants one gets a ``ModelClient`` in
``ctx.model``: ``OpenAICompatibleModel`` speaks the OpenAI chat-completions protocol over httpx
(any compatible server: vLLM, Ollama, llama.cpp, a hosted API), with the transport injectable for
tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from switchyard.protocol.messages import Usage
from switchyard.tools.breaker import Breakers


@dataclass(frozen=True, slots=True)
class ModelReply:
    text: str
    usage: Usage


class ModelClient(Protocol):
    async def chat(self, messages: list[dict[str, str]], **options: object) -> ModelReply: ...


class OpenAICompatibleModel:
    """Chat completions against ``{base_url}/chat/completions``.

    A failed call (connection error, timeout, 429 or 5xx) is retried up to ``attempts`` times with
    exponential backoff and full jitter (tenacity); every attempt goes through the endpoint's
    circuit breaker, which after ``breakers.fail_max`` failures in a row answers at once with
    ``circuit_open`` (retryable) until a trial call succeeds.
    """

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
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.model = model
        self.endpoint = base_url.rstrip("/")
        self.breakers = breakers or Breakers()
        self._retrying = dict(
            stop=stop_after_attempt(attempts), reraise=True,
            wait=wait_exponential_jitter(multiplier=backoff_s, max=30.0, jitter=backoff_s),
            retry=retry_if_exception(_transient),
        )
        self._http = httpx.AsyncClient(
            base_url=self.endpoint, headers=headers, timeout=timeout, transport=transport
        )

    async def chat(self, messages: list[dict[str, str]], **options: object) -> ModelReply:
        body = {"model": self.model, "messages": messages, **options}
        async for attempt in AsyncRetrying(**self._retrying):  # type: ignore[arg-type]
            with attempt, self.breakers.guard(self.endpoint, f"model endpoint {self.endpoint}"):
                response = await self._http.post("/chat/completions", json=body)
                response.raise_for_status()
        data = response.json()
        usage = data.get("usage") or {}
        return ModelReply(
            text=data["choices"][0]["message"]["content"] or "",
            usage=Usage(
                input_tokens=int(usage.get("prompt_tokens", 0)),
                output_tokens=int(usage.get("completion_tokens", 0)),
                model=str(data.get("model", self.model)),
            ),
        )

    async def aclose(self) -> None:
        await self._http.aclose()


def _transient(exc: BaseException) -> bool:
    """Worth another try: the endpoint was unreachable, slow, overloaded or failing."""
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code == 429 or exc.response.status_code >= 500
    return isinstance(exc, httpx.TransportError)
