"""Model calls of one task: the step's models tried in order, ceilings checked before each call,
every call accounted for, deterministic calls cached.

``ModelRouter`` is the process's: the catalogue, one client per model (made on first use), the
circuit breakers, the cache. ``TaskModels`` is one task's view of it, as ``ctx.models``:

- the models to try are the task's ``ModelPlan`` (the supervisor's choice and the step's
  fallbacks), or the agent's default model when the step has no policy;
- a model whose breaker is open, that fails after its retries, or times out is passed over
  (with why) and the next one is tried; when none answers, ``ModelError``;
- before each call, the prompt's size (estimated) plus ``max_tokens`` must fit the per-call
  ceiling and what the step and the workflow have left, in tokens and in USD at the model's
  price: ``max_tokens`` is lowered to fit, and a call that cannot fit is refused
  (``ModelBudgetError``) without being made;
- a call at temperature 0 is looked up first in the ``model_cache`` bucket (when a TTL is set),
  keyed by the model and the SHA-256 of the request; a hit costs nothing and is counted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import BaseModel, ValidationError

from switchyard.agents.model.catalogue import Catalogue, ModelSpec
from switchyard.agents.model.client import Message, ModelReply, OpenAICompatibleModel, ToolCallRequest
from switchyard.protocol.bus.provision import kv_write
from switchyard.protocol.errors import ConfigError, ModelBudgetError, ModelError
from switchyard.protocol.messages import ModelCall, ModelPlan, ModelUse, Usage
from switchyard.tools.breaker import Breakers

M = TypeVar("M", bound=BaseModel)
MIN_OUTPUT_TOKENS = 16  # a call that may not write even this much is not worth making
CHARS_PER_TOKEN = 3.5  # a cautious estimate of a prompt's tokens before it is sent


@dataclass
class CacheCounts:
    hits: int = 0
    misses: int = 0


class _ModelMetrics:
    """The model calls of one agent process, by catalogue model (a bounded set)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter("switchyard_agent_model_calls", "Model calls by outcome",
                             ["model", "outcome"], registry=registry)
        self.tokens = Counter("switchyard_agent_model_tokens", "Model tokens",
                              ["model", "type"], registry=registry)
        self.cost = Counter("switchyard_agent_model_cost_usd", "Model cost in USD at the "
                            "catalogue's price", ["model"], registry=registry)
        self.seconds = Histogram("switchyard_agent_model_call_seconds", "Model call latency",
                                 ["model"], registry=registry,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120))
        self.cache = Counter("switchyard_agent_model_cache_lookups", "Model cache lookups",
                             ["result"], registry=registry)


class ModelRouter:
    """The models one agent process calls."""

    def __init__(self, catalogue: Catalogue, *, default: str = "", breakers: Breakers | None = None,
                 cache_ttl_s: float = 0.0, metrics: CollectorRegistry | None = None,
                 role: str = "") -> None:
        self.catalogue = catalogue
        self.role = role  # the cache's keys are the role's own (a role may write only those)
        self.default = default
        self.breakers = breakers or Breakers(fail_max=3, reset_timeout=30.0, metrics=metrics)
        self.cache_ttl_s = cache_ttl_s
        self.cache: KeyValue | None = None
        self.cache_js: JetStreamContext | None = None
        self.cache_bucket = ""
        self.cache_counts = CacheCounts()
        self._clients: dict[str, OpenAICompatibleModel] = {}
        # how each model takes a JSON schema, once a server refused the other way
        self.formats: dict[str, str] = {}
        self.metrics = _ModelMetrics(metrics) if metrics is not None else None

    def client(self, spec: ModelSpec) -> OpenAICompatibleModel:
        found = self._clients.get(spec.name)
        if found is None:
            found = self._clients[spec.name] = OpenAICompatibleModel(
                spec.base_url, spec.provider_model, api_key=spec.api_key.get_secret_value(),
                timeout=spec.timeout_s, attempts=spec.attempts, breakers=self.breakers)
        return found

    def for_task(self, plan: ModelPlan | None, *,
                 on_delta: Callable[[str], Awaitable[None]] | None = None,
                 on_end: Callable[[], Awaitable[None]] | None = None,
                 deadline: float = 0.0) -> TaskModels:
        return TaskModels(self, plan, on_delta=on_delta, on_end=on_end, deadline=deadline)

    def bind_cache(self, js: JetStreamContext, bucket: str, kv: KeyValue) -> None:
        """Cache deterministic calls in ``bucket`` (entries live ``cache_ttl_s``)."""
        self.cache_js, self.cache_bucket, self.cache = js, bucket, kv

    def counted(self, hit: bool) -> None:
        if hit:
            self.cache_counts.hits += 1
        else:
            self.cache_counts.misses += 1
        if self.metrics is not None:
            self.metrics.cache.labels("hit" if hit else "miss").inc()

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


class TaskModels:
    """One task's model calls (``ctx.models``)."""

    def __init__(self, router: ModelRouter, plan: ModelPlan | None, *,
                 on_delta: Callable[[str], Awaitable[None]] | None = None,
                 on_end: Callable[[], Awaitable[None]] | None = None,
                 deadline: float = 0.0) -> None:
        self.router = router
        self.plan = plan
        # the task's deadline (epoch s, 0: none): each model tried gets its share of the time
        # left, so a slow one is given up in time for the next
        self.deadline = deadline
        self.on_delta = on_delta  # each piece of a streamed reply
        self.on_end = on_end  # after each streamed reply: a watcher starts a new line
        self.cache_key = ""  # the last reply's entry in the cache, if it came from or went there
        self.usage = Usage()
        self.calls: list[ModelCall] = []
        self.tried: list[str] = []
        self.answered = ""
        self.reason = ""
        self.prompt = ""

    @property
    def candidates(self) -> list[str]:
        if self.plan is not None and self.plan.models:
            return list(self.plan.models)
        if not self.router.default:
            raise ConfigError("this agent has no model: set SWITCHYARD_MODEL (or give the step a "
                              "model policy)")
        return [self.router.default]

    def use(self) -> ModelUse | None:
        if not self.calls:
            return None
        return ModelUse(model=self.answered, reason=self.reason, tried=list(self.tried),
                        prompt=self.prompt, calls=list(self.calls))

    async def chat(
        self, messages: list[Message], *, schema: dict[str, Any] | None = None,
        schema_name: str = "output", tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None, temperature: float = 0.0,
        max_tokens: int = 512, stream: bool = False,
    ) -> ModelReply:
        """One completion from the first of the step's models that answers."""
        failures: list[str] = []
        retryable = False
        names = self.candidates
        for position, name in enumerate(names):
            try:
                spec = self.router.catalogue.get(name)
            except ConfigError as exc:
                failures.append(self._passed_over(name, exc.message))
                continue
            if spec.kind != "openai":
                failures.append(self._passed_over(name, "a local model, not callable here"))
                continue
            fmt = self.router.formats.get(name, spec.response_format)
            timeout = spec.timeout_s
            if self.deadline:
                left = self.deadline - time.time()
                if left <= 0.05:
                    failures.append(self._passed_over(name, "no time left before the deadline"))
                    retryable = True  # another attempt has a deadline of its own
                    break
                timeout = min(timeout, left / (len(names) - position))
            try:
                fit = self._fit(spec, messages, tools, schema, max_tokens)
                try:
                    reply = await self._call(spec, _request(
                        messages, fmt, schema, schema_name, tools, tool_choice, temperature, fit),
                        stream and "stream" in spec.capabilities, timeout)
                except ModelError as exc:
                    if schema is None or fmt != "json_schema" or not _refused_format(exc):
                        raise
                    # a server that knows only the older form (llama-cpp-python's): ask that way,
                    # from now on
                    self.router.formats[name] = "json_object"
                    reply = await self._call(spec, _request(
                        messages, "json_object", schema, schema_name, tools, tool_choice,
                        temperature, fit), stream and "stream" in spec.capabilities, timeout)
            except ModelBudgetError as exc:
                if exc.scope == "left":  # the step and the run: their budget's path
                    raise
                failures.append(self._passed_over(name, exc.message))  # this model cannot
                continue
            except ModelError as exc:
                retryable = retryable or exc.retryable
                failures.append(self._passed_over(name, exc.message))
                self.calls.append(ModelCall(model=name, error=exc.code))
                if self.router.metrics is not None:
                    self.router.metrics.calls.labels(name, exc.code).inc()
                continue
            self.answered = name
            if position:
                self.reason = f"fallback after {'; '.join(failures)}"
            else:
                self.reason = (self.plan.reason if self.plan is not None and self.plan.models
                               else "the agent's default model")
            return reply
        raise ModelError(f"no model of the step answered: {'; '.join(failures)}",
                         retryable=retryable)

    async def structured(
        self, messages: list[Message], model: type[M], *, max_tokens: int = 512,
        stream: bool = False, **options: Any,
    ) -> M:
        """A reply that validates into ``model``. One that does not is put back to the model
        once with the validation error; a second that does not raises ``ValidationError``
        (the runtime's ``invalid_output``). Never repaired by guessing."""
        schema = model.model_json_schema()
        history = list(messages)
        reply = await self.chat(history, schema=schema, schema_name=model.__name__,
                                max_tokens=max_tokens, stream=stream, **options)
        try:
            return _validated(model, reply.text)
        except ValidationError as exc:
            await self._forget()  # a reply that does not validate is not kept for next time
            history += [{"role": "assistant", "content": reply.text},
                        {"role": "user", "content": (
                            "That reply does not match the schema: "
                            f"{_brief(exc)}. Answer again with only a JSON object that does.")}]
        reply = await self.chat(history, schema=schema, schema_name=model.__name__,
                                max_tokens=max_tokens, stream=stream, **options)
        try:
            return _validated(model, reply.text)
        except ValidationError:
            await self._forget()
            raise

    async def _forget(self) -> None:
        if self.cache_key and self.router.cache is not None:
            with contextlib.suppress(Exception):  # then it is only a bad hit until its TTL
                await self.router.cache.purge(self.cache_key)

    # the parts -------------------------------------------------------------------------------

    def _passed_over(self, name: str, why: str) -> str:
        entry = f"{name}: {why}"
        self.tried.append(entry)
        return entry

    def _fit(self, spec: ModelSpec, messages: list[Message], tools: list[dict[str, Any]] | None,
             schema: dict[str, Any] | None, max_tokens: int) -> int:
        """``max_tokens`` lowered to fit every ceiling; ``ModelBudgetError`` if it cannot."""
        prompt = _prompt_tokens(messages, tools, schema)
        out = min(max_tokens, spec.context - prompt)
        ceilings = [] if self.plan is None else [
            ("the call", self.plan.call, Usage(), "call"),
            ("the step and workflow", self.plan.left, self.usage, "left")]
        for what, budget, spent, scope in ceilings:
            if budget.tokens:
                left = budget.tokens - spent.tokens - prompt
                if left < MIN_OUTPUT_TOKENS:
                    raise ModelBudgetError(what, prompt + MIN_OUTPUT_TOKENS,
                                           max(0, budget.tokens - spent.tokens), "tokens", scope)
                out = min(out, left)
            if budget.cost_usd:
                left_usd = budget.cost_usd - spent.cost_usd
                least = spec.cost(prompt, MIN_OUTPUT_TOKENS)
                if least > left_usd:
                    raise ModelBudgetError(what, round(least, 6), round(max(0.0, left_usd), 6),
                                           "USD", scope)
                if spec.price.output_per_mtok:
                    out = min(out, math.floor((left_usd - spec.cost(prompt, 0)) * 1e6
                                              / spec.price.output_per_mtok))
        if out < MIN_OUTPUT_TOKENS:
            raise ModelBudgetError(f"model {spec.name}'s context", prompt + MIN_OUTPUT_TOKENS,
                                   spec.context, "tokens", "context")
        return out

    async def _call(self, spec: ModelSpec, request: dict[str, Any], stream: bool,
                    timeout: float | None = None) -> ModelReply:
        router = self.router
        cache_key = self.cache_key = ""
        if router.cache is not None and request.get("temperature") == 0:
            cache_key = self.cache_key = _cache_key(spec, request, router.role)
            try:
                entry = await router.cache.get(cache_key)
            except Exception:  # not there (or expired)
                entry = None
            if entry is not None and entry.value:
                router.counted(hit=True)
                reply = _from_cache(entry.value, spec.name)
                if stream and self.on_delta is not None and reply.text:
                    await self.on_delta(reply.text)
                    if self.on_end is not None:
                        await self.on_end()
                self._account(spec, reply, cached=True)
                return reply
            router.counted(hit=False)
        client = router.client(spec)
        reply = await client.chat(**request, on_delta=self.on_delta if stream else None,
                                  timeout=timeout)
        if stream and self.on_delta is not None and self.on_end is not None:
            await self.on_end()
        self._account(spec, reply, cached=False, prompt_estimate=_prompt_tokens(
            request["messages"], request.get("tools"), request.get("response_format")))
        if cache_key and router.cache is not None and router.cache_js is not None:
            try:
                await kv_write(router.cache_js, router.cache_bucket, cache_key, _to_cache(reply),
                               ttl=router.cache_ttl_s)
            except Exception:  # a cache that cannot be written is only a miss next time
                pass
        return reply

    def _account(self, spec: ModelSpec, reply: ModelReply, *, cached: bool,
                 prompt_estimate: int = 0) -> None:
        u = reply.usage
        if not cached and not (u.input_tokens or u.output_tokens):
            # a server that reports no usage (llama.cpp's, when streaming): estimated, so that
            # ceilings still hold
            u = msgspec.structs.replace(
                u, input_tokens=prompt_estimate,
                output_tokens=math.ceil(len(reply.text + json.dumps(
                    [c.arguments for c in reply.tool_calls])) / CHARS_PER_TOKEN))
        cost = 0.0 if cached else round(spec.cost(u.input_tokens, u.output_tokens), 9)
        call = ModelCall(model=spec.name, input_tokens=0 if cached else u.input_tokens,
                         output_tokens=0 if cached else u.output_tokens, cost_usd=cost,
                         latency_ms=u.latency_ms, cached=cached,
                         estimated=u is not reply.usage)
        self.calls.append(call)
        m = self.router.metrics
        if m is not None:
            m.calls.labels(spec.name, "cached" if cached else "ok").inc()
            m.tokens.labels(spec.name, "input").inc(call.input_tokens)
            m.tokens.labels(spec.name, "output").inc(call.output_tokens)
            m.cost.labels(spec.name).inc(cost)
            if not cached:
                m.seconds.labels(spec.name).observe(call.latency_ms / 1000)
        self.usage = self.usage.plus(Usage(
            input_tokens=call.input_tokens, output_tokens=call.output_tokens, cost_usd=cost,
            model=spec.name, calls=1, latency_ms=call.latency_ms, cache_hits=int(cached)))


def _refused_format(exc: ModelError) -> bool:
    """The server refused the request's ``response_format`` (llama-cpp-python answers 500 to a
    type it does not know, others 400 or 422)."""
    return exc.status in (400, 422, 500) and "response_format" in exc.message


def _prompt_tokens(messages: list[Message], tools: Any, schema: Any) -> int:
    """A cautious estimate of a prompt's tokens, before it is sent."""
    return math.ceil(len(json.dumps([messages, tools, schema])) / CHARS_PER_TOKEN)


def _request(messages: list[Message], fmt: str, schema: dict[str, Any] | None,
             schema_name: str, tools: list[dict[str, Any]] | None,
             tool_choice: str | dict[str, Any] | None, temperature: float,
             max_tokens: int) -> dict[str, Any]:
    request: dict[str, Any] = {"messages": messages, "temperature": temperature,
                               "max_tokens": max_tokens}
    if schema is not None:
        if fmt == "json_object":  # llama-cpp-python's server: a grammar from the schema
            request["response_format"] = {"type": "json_object", "schema": schema}
        else:
            request["response_format"] = {"type": "json_schema", "json_schema": {
                "name": schema_name, "schema": schema, "strict": True}}
    if tools:
        request["tools"] = tools
        if tool_choice is not None:
            request["tool_choice"] = tool_choice
    return request


def _cache_key(spec: ModelSpec, request: dict[str, Any], role: str) -> str:
    body = json.dumps([spec.base_url, spec.provider_model, request], sort_keys=True)
    digest = hashlib.sha256(body.encode()).hexdigest()
    return f"{role}.{digest}" if role else digest


class _Cached(msgspec.Struct):
    text: str
    tool_calls: list[tuple[str, str, str]]
    finish_reason: str
    message: dict[str, Any]


def _to_cache(reply: ModelReply) -> bytes:
    return msgspec.json.encode(_Cached(
        reply.text, [(c.id, c.name, c.arguments) for c in reply.tool_calls], reply.finish_reason,
        reply.message))


def _from_cache(data: bytes, model: str) -> ModelReply:
    c = msgspec.json.decode(data, type=_Cached)
    return ModelReply(text=c.text, usage=Usage(model=model, calls=1, cache_hits=1),
                      tool_calls=tuple(ToolCallRequest(*t) for t in c.tool_calls),
                      finish_reason=c.finish_reason, message=c.message)


def _validated(model: type[M], text: str) -> M:
    """``text`` as ``model``. Control characters inside strings are let through (models write
    raw newlines in JSON strings, and strict JSON forbids them); nothing else is forgiven."""
    try:
        value = json.loads(text, strict=False)
    except ValueError:
        return model.model_validate_json(text)  # not JSON at all: pydantic's error says so
    return model.model_validate(value)


def _brief(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}"
                     for e in exc.errors()[:5])

