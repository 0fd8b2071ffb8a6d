"""A task's model calls (``ctx.models``) against the stub server: the fallback chain and its
breakers, validation retried once, ceilings enforced before the call, the KV cache."""

from __future__ import annotations

import pytest
from nats.js.client import JetStreamContext
from pydantic import BaseModel, ValidationError

from switchyard.agents.model.catalogue import Catalogue, ModelSpec, Price, load_catalogue
from switchyard.agents.model.routing import ModelRouter
from switchyard.protocol.bus.provision import open_bucket
from switchyard.protocol.errors import ConfigError, ModelBudgetError, ModelError
from switchyard.protocol.messages import Budget, ModelPlan
from switchyard.protocol.subjects import Bucket, Subjects
from switchyard.tools.breaker import Breakers
from tests.agents.openai_stub import Stub

HI = [{"role": "user", "content": "hi"}]


class Verdict(BaseModel):
    ok: bool
    score: float


def catalogue(stub: Stub) -> Catalogue:
    def spec(name: str, tier: int, price_in: float, price_out: float) -> ModelSpec:
        return ModelSpec(name=name, base_url=stub.url, tier=tier, attempts=2,
                         price=Price(input_per_mtok=price_in, output_per_mtok=price_out))
    return Catalogue(models=[spec("small", 1, 0.1, 0.4), spec("backup", 1, 0.2, 0.8),
                             spec("large", 2, 2.0, 8.0)])


def router(stub: Stub, **kw: object) -> ModelRouter:
    return ModelRouter(catalogue(stub), default="small",
                       breakers=Breakers(fail_max=2, reset_timeout=60), **kw)  # type: ignore[arg-type]


async def test_the_chain_falls_back_on_500s_and_the_open_breaker_skips_the_broken_model(
    stub: Stub,
) -> None:
    stub.script("small", *[{"status": 500}] * 2)
    r = router(stub)
    plan = ModelPlan(models=["small", "backup"], reason="the step's model")
    first = r.for_task(plan)
    reply = await first.chat(HI)
    assert reply.text == "echo: hi" and first.answered == "backup"
    assert first.reason.startswith("fallback after small: model small answered 500")
    assert [c.model for c in first.calls] == ["small", "backup"] and first.calls[0].error
    assert r.breakers.state(r.client(r.catalogue.get("small")).breaker_name) == "open"
    later = r.for_task(plan)
    await later.chat(HI)
    assert later.answered == "backup" and "circuit opened" in later.tried[0]
    assert len(stub.calls("small")) == 2  # the later task never reached the broken model
    use = later.use()
    assert use is not None and use.model == "backup" and use.tried == later.tried
    await r.aclose()


async def test_when_every_model_fails_the_error_names_each(stub: Stub) -> None:
    stub.script("small", {"status": 400, "message": "bad request"})
    stub.script("backup", {"raw": "not json"})
    r = router(stub)
    with pytest.raises(ModelError) as failed:
        await r.for_task(ModelPlan(models=["small", "backup", "nope"])).chat(HI)
    await r.aclose()
    message = failed.value.message
    assert "small: model small answered 400: bad request" in message
    assert "backup: model backup: the reply is not JSON" in message
    assert "nope: no model named 'nope'" in message and not failed.value.retryable


async def test_a_reply_that_does_not_validate_is_retried_once_with_the_error(stub: Stub) -> None:
    stub.script("small", {"json": {"ok": "perhaps"}}, {"json": {"ok": True, "score": 0.5}})
    r = router(stub)
    models = r.for_task(None)
    got = await models.structured(HI, Verdict)
    assert got == Verdict(ok=True, score=0.5) and models.usage.calls == 2
    retry = stub.calls("small")[1]["body"]["messages"]
    assert retry[-2] == {"role": "assistant", "content": '{"ok": "perhaps"}'}
    assert "does not match the schema" in retry[-1]["content"] and "ok" in retry[-1]["content"]
    stub.script("small", {"json": {"ok": 1}}, {"content": "I think it is fine"})
    with pytest.raises(ValidationError):  # twice: a failure, never a guess
        await r.for_task(None).structured(HI, Verdict)
    await r.aclose()


async def test_ceilings_are_enforced_before_the_call(stub: Stub) -> None:
    r = router(stub)
    # a per-call ceiling a model cannot fit passes it over (for the next), never calls it
    tight = r.for_task(ModelPlan(models=["small"], call=Budget(tokens=10)))
    with pytest.raises(ModelError) as passed:
        await tight.chat(HI)
    assert not isinstance(passed.value, ModelBudgetError)
    assert "small: the call needs up to" in passed.value.message
    # what the step and the run have left is their budget's: refused, with its own code
    spent = r.for_task(ModelPlan(models=["small", "backup"], left=Budget(tokens=10)))
    with pytest.raises(ModelBudgetError) as refused:
        await spent.chat(HI)
    assert refused.value.code == "model_budget" and refused.value.scope == "left"
    assert stub.calls() == []  # refused without a request
    fitted = r.for_task(ModelPlan(models=["large"], left=Budget(cost_usd=0.001)))
    await fitted.chat(HI, max_tokens=1000)
    # 0.001 USD at 8 USD per million output tokens leaves room for at most 125 tokens out
    assert stub.calls("large")[0]["body"]["max_tokens"] <= 125
    spent = fitted.usage.cost_usd
    assert spent == pytest.approx(fitted.calls[0].cost_usd) and spent > 0
    broke = r.for_task(ModelPlan(models=["large"], left=Budget(cost_usd=0.000001)))
    with pytest.raises(ModelBudgetError, match="USD"):
        await broke.chat(HI)
    assert len(stub.calls("large")) == 1
    await r.aclose()


async def test_cost_is_the_catalogue_price_of_the_tokens(stub: Stub) -> None:
    r = router(stub)
    models = r.for_task(ModelPlan(models=["large"]))
    reply = await models.chat(HI)
    u = reply.usage
    assert models.usage.cost_usd == pytest.approx(
        (u.input_tokens * 2.0 + u.output_tokens * 8.0) / 1e6)
    await r.aclose()


async def test_deterministic_calls_are_cached_in_kv_with_hits_and_misses_counted(
    stub: Stub, js: JetStreamContext, subjects: Subjects,
) -> None:
    bucket = subjects.bucket(Bucket.MODEL_CACHE)
    kv = await open_bucket(js, bucket)
    r = router(stub, cache_ttl_s=60)
    r.bind_cache(js, bucket, kv)
    prompt = [{"role": "user", "content": "cache me"}]
    first, second = r.for_task(None), r.for_task(None)
    assert (await first.chat(prompt)).text == (await second.chat(prompt)).text
    assert len(stub.calls("small")) == 1
    assert (r.cache_counts.hits, r.cache_counts.misses) == (1, 1)
    assert second.usage.cache_hits == 1 and second.usage.cost_usd == 0
    assert second.calls[0].cached and not first.calls[0].cached
    await r.for_task(None).chat(prompt, temperature=0.7)  # not deterministic: never cached
    await r.for_task(None).chat([{"role": "user", "content": "other"}])
    assert len(stub.calls("small")) == 3 and r.cache_counts.misses == 2
    await r.aclose()


def test_the_catalogue_holds_the_local_models_and_reads_keys_from_the_environment(
    tmp_path: object,
) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "models.yaml"
    path.write_text("models:\n  - name: hosted\n    base_url: https://api.example.com/v1\n"
                    "    api_key_env: MY_KEY\n    price: {input_per_mtok: 1, output_per_mtok: 2}\n")
    cat = load_catalogue(path, base_url="http://127.0.0.1:1/v1", model="tiny",
                         env={"MY_KEY": "secret"})
    assert {"triage-classifier", "retrieval-scorer", "rule-drafter"} <= set(cat.names())
    assert cat.get("triage-classifier").kind == "local"
    assert cat.get("llm").provider_model == "tiny"
    hosted = cat.get("hosted")
    assert hosted.api_key.get_secret_value() == "secret" and "secret" not in repr(hosted)
    path.write_text("models:\n  - name: hosted\n    base_url: https://x/v1\n    api_key: sk-1\n")
    with pytest.raises(ConfigError, match="api_key_env"):
        load_catalogue(path)
    path.write_text("models:\n  - name: bad name\n    base_url: https://x/v1\n")
    with pytest.raises(ConfigError, match="model name"):
        load_catalogue(path)
    with pytest.raises(ConfigError, match="no model named 'gpt'"):
        cat.get("gpt")


async def test_a_server_that_refuses_json_schema_is_asked_with_json_object_from_then_on(
    stub: Stub,
) -> None:
    stub.refuse_json_schema.add("small")
    stub.answer("small", by_schema={"Verdict": {"ok": True, "score": 1.0}})
    r = router(stub)
    assert (await r.for_task(None).structured(HI, Verdict)).ok
    assert (await r.for_task(None).structured(HI, Verdict)).ok
    forms = [c["body"]["response_format"]["type"] for c in stub.calls("small")]
    assert forms == ["json_schema", "json_object", "json_object"]  # learnt once
    assert r.formats == {"small": "json_object"}
    assert r.breakers.state(r.client(r.catalogue.get("small")).breaker_name) == "closed"
    await r.aclose()


async def test_a_model_slower_than_its_share_of_the_deadline_is_given_up_for_the_next(
    stub: Stub,
) -> None:
    import time

    stub.script("small", {"delay_s": 5.0})
    r = router(stub)
    models = r.for_task(ModelPlan(models=["small", "backup"]), deadline=time.time() + 2.0)
    reply = await models.chat(HI)  # small gets half the time left, then backup the rest
    assert reply.text == "echo: hi" and models.answered == "backup"
    assert models.tried[0].startswith("small: model small at") and "Timeout" in models.tried[0]
    await r.aclose()
