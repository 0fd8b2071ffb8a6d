"""The seam for language models.

Reference agents work without any model API. An agent that wants one gets a ``ModelClient`` in
``ctx.model``: ``OpenAICompatibleModel`` speaks the OpenAI chat-completions protocol over httpx
(any compatible server: vLLM, Ollama, llama.cpp, a hosted API), with the transport injectable for
tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from switchyard.protocol.messages import Usage


@dataclass(frozen=True, slots=True)
class ModelReply:
    text: str
    usage: Usage


class ModelClient(Protocol):
    async def chat(self, messages: list[dict[str, str]], **options: Any) -> ModelReply: ...


class OpenAICompatibleModel:
    """Chat completions against ``{base_url}/chat/completions``."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str = "",
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.model = model
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )

    async def chat(self, messages: list[dict[str, str]], **options: Any) -> ModelReply:
        body = {"model": self.model, "messages": messages, **options}
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
