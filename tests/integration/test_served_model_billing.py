"""A call is billed for the model that answered it: on the real gateway, limiter and cost service, with
the simulator playing Together.ai and OpenAI, a call to a Together.ai model that falls back to OpenAI is
recorded and priced as gpt-4o, reservations assume the dearest route, and the provider is never sent a
call that may generate more than was reserved."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import httpx
import pytest
from redis.asyncio import Redis

from services.api.tiktoken_token_counter import TiktokenTokenCounter
from services.api.usage import prompt_tokens
from services.simulator.app import create_app as create_simulator
from shared.bus import publish_event
from shared.events import LlmCompleted
from shared.pricing import to_nano_usd
from tests.conftest import set_faults, start_services, unique
from tests.integration.helpers import auth, new_key
from tests.integration.test_usage_accounting import ledger_row, settled_counters
from tests.servers import ThreadedHttpServer, nats_server, stop_all
from tests.support.polling import eventually

pytestmark = pytest.mark.service

LLAMA_70B = "meta-llama/Llama-3-70b-chat-hf"  # Together.ai first ($0.90/$0.90), gpt-4o as fallback
CAPPED = "capped-model"  # the config gives it a ceiling of 16 tokens
GPT_4O = (Decimal("2.50"), Decimal("10.00"))  # USD per 1M tokens, in and out, keyed openai/gpt-4o in the config
PLAIN_GPT_4O = Decimal("0.01")  # the config's plain `gpt-4o` price: must lose to openai/gpt-4o
LLAMA_70B_PRICE = Decimal("0.90")  # USD per 1M tokens, both ways (the built-in price)
PROVIDER_TIMEOUT_S = 2
BUDGET_USD = Decimal("0.002")
DEFAULT_MAX_TOKENS = 48
MESSAGES = [{"role": "user", "content": "Summarise the quarter's spend in one line."}]


def messages_of(tag: str) -> list[dict]:
    """Messages no other call sends, to find this call among what a provider was asked."""
    return [{"role": "user", "content": f"Summarise the quarter's spend in one line ({tag})."}]
COUNTER = TiktokenTokenCounter.cl100k()


def gpt_4o_cost(prompt: int, completion: int) -> Decimal:
    return (prompt * GPT_4O[0] + completion * GPT_4O[1]) / 1_000_000


@pytest.fixture(scope="module")
def stack(base_env, tmp_path_factory):
    """Gateway, limiter and cost service on a bus of their own and providers of their own, with a free
    tier whose daily budget is $0.002, prices that tell a provider-specific entry from a plain one, and a
    model with a completion ceiling."""
    tiers = {name: {"requests": 1000, "window_s": 3600, "strict_requests": 10, "tokens_per_minute": 1_000_000,
                    "daily_budget_usd": str(BUDGET_USD if name == "free" else 100)}
             for name in ("anonymous", "free", "pro", "enterprise")}
    models = {LLAMA_70B: [{"provider": "together_ai", "model": LLAMA_70B}, {"provider": "openai", "model": "gpt-4o"}],
              CAPPED: {"routes": [{"provider": "openai", "model": "gpt-4o-mini"}], "max_tokens": 16}}
    prices = {"openai/gpt-4o": {"input": str(GPT_4O[0]), "output": str(GPT_4O[1])},
              "gpt-4o": {"input": str(PLAIN_GPT_4O), "output": str(PLAIN_GPT_4O)}}
    config = tmp_path_factory.mktemp("served") / "costwarden.yaml"
    config.write_text(json.dumps({"tiers": tiers, "models": models, "prices": prices}))
    bus, bus_url = nats_server()
    together = ThreadedHttpServer(create_simulator("together_ai")).start()
    openai_sim = ThreadedHttpServer(create_simulator("openai")).start()
    env = {**base_env, "NATS_URL": bus_url, "COSTWARDEN_CONFIG": str(config), "PROVIDER_MAX_RETRIES": "0",
           "BREAKER_FAILURE_THRESHOLD": "1000000",  # every call here tries Together.ai first, whatever came before
           "PROVIDER_TIMEOUT_S": str(PROVIDER_TIMEOUT_S),
           "DEFAULT_MAX_TOKENS": str(DEFAULT_MAX_TOKENS), "TOGETHER_BASE_URL": f"{together.url}/v1",
           "OPENAI_BASE_URL": f"{openai_sim.url}/v1"}
    services = start_services(("limiter", env, "LIMITER_PORT"), ("cost", env, "COST_PORT"), ("api", env, "API_PORT"))
    yield {"api": services[-1], "together": together, "openai": openai_sim, "nats_url": bus_url}
    stop_all(services)
    together.stop()
    openai_sim.stop()
    bus.stop()


@pytest.fixture
def together_down(stack):
    """Together.ai answers every call with a 503 (never billed), OpenAI answers."""
    set_faults(stack["together"], status=503, count=100_000)
    set_faults(stack["openai"])
    yield stack
    set_faults(stack["together"])
    set_faults(stack["openai"])


def provider_requests(server: ThreadedHttpServer) -> list[dict]:
    return httpx.get(f"{server.url}/_sim/requests").json()


async def test_a_fallback_call_is_billed_at_the_model_that_answered(together_down, database_url, db):
    key = await new_key(database_url, unique("served"), "pro")
    async with httpx.AsyncClient(base_url=together_down["api"].url, timeout=30, headers=auth(key)) as client:
        response = await client.post("/v1/chat/completions",
                                     json={"model": LLAMA_70B, "messages": MESSAGES, "max_tokens": 20})
    assert response.status_code == 200 and response.headers["X-Costwarden-Provider"] == "openai"
    usage = response.json()["usage"]
    row = await ledger_row(db, response.headers["x-request-id"])
    assert (row["model"], row["provider"], row["served_model"]) == (LLAMA_70B, "openai", "gpt-4o")
    assert row["cost"] == gpt_4o_cost(usage["prompt_tokens"], usage["completion_tokens"]) and row["priced"]

    async with httpx.AsyncClient(base_url=together_down["api"].url, timeout=30, headers=auth(key)) as client:
        analytics = (await client.get("/api/costs/analytics", params={
            "start": "2020-01-01T00:00:00Z", "end": "2100-01-01T00:00:00Z"})).json()
    assert [(b["key"], Decimal(b["cost"])) for b in analytics["by_model"]] == [(LLAMA_70B, row["cost"])]
    assert [(b["key"], Decimal(b["cost"])) for b in analytics["by_served_model"]] == [("gpt-4o", row["cost"])]


async def test_a_stream_that_falls_back_before_its_first_byte_is_billed_at_the_model_that_answered(
        together_down, database_url, db):
    key = await new_key(database_url, unique("served"), "pro")
    body = {"model": LLAMA_70B, "messages": MESSAGES, "max_tokens": 12, "stream": True}
    async with httpx.AsyncClient(base_url=together_down["api"].url, timeout=30, headers=auth(key)) as client:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    assert response.status_code == 200 and response.headers["X-Costwarden-Provider"] == "openai"
    assert lines[-1] == "data: [DONE]"
    row = await ledger_row(db, response.headers["x-request-id"])
    assert (row["provider"], row["served_model"], row["usage_source"]) == ("openai", "gpt-4o", "provider")
    assert row["completion_tokens"] == 12
    assert row["cost"] == gpt_4o_cost(row["prompt_tokens"], 12)


async def test_a_fallback_answer_without_usage_is_estimated_and_priced_at_the_model_that_answered(
        together_down, database_url, db):
    set_faults(together_down["openai"], omit_usage=True)
    key = await new_key(database_url, unique("served"), "pro")
    async with httpx.AsyncClient(base_url=together_down["api"].url, timeout=30, headers=auth(key)) as client:
        response = await client.post("/v1/chat/completions",
                                     json={"model": LLAMA_70B, "messages": MESSAGES, "max_tokens": 10})
    assert response.status_code == 200 and "usage" not in response.json()
    row = await ledger_row(db, response.headers["x-request-id"])
    assert (row["served_model"], row["usage_source"]) == ("gpt-4o", "estimated")
    assert row["prompt_tokens"] == prompt_tokens(COUNTER, {"messages": MESSAGES}) and row["completion_tokens"] == 10
    assert row["cost"] == gpt_4o_cost(row["prompt_tokens"], 10)


async def test_an_attempt_that_timed_out_is_billed_at_its_own_model_beside_the_answer(stack, database_url, db):
    """Together.ai had the prompt and worked on it past the timeout (providers bill that); OpenAI answered."""
    set_faults(stack["together"], delay_s=PROVIDER_TIMEOUT_S + 1)
    key = await new_key(database_url, unique("timeout"), "pro")
    try:
        async with httpx.AsyncClient(base_url=stack["api"].url, timeout=30, headers=auth(key)) as client:
            response = await client.post("/v1/chat/completions",
                                         json={"model": LLAMA_70B, "messages": MESSAGES, "max_tokens": 8})
    finally:
        set_faults(stack["together"])
    assert response.status_code == 200 and response.headers["X-Costwarden-Provider"] == "openai"
    usage = response.json()["usage"]
    row = await ledger_row(db, response.headers["x-request-id"])
    assert (row["provider"], row["served_model"]) == ("openai", "gpt-4o")
    estimate = prompt_tokens(COUNTER, {"messages": MESSAGES})
    assert row["prompt_tokens"] == usage["prompt_tokens"] + estimate  # both providers bill the prompt
    assert row["cost"] == gpt_4o_cost(usage["prompt_tokens"], 8) + estimate * LLAMA_70B_PRICE / 1_000_000


async def test_calls_that_all_fall_back_to_the_dearer_model_cannot_spend_past_the_budget(
        together_down, database_url, redis_url, db):
    """Reserved at gpt-4o's price (the dearest route), every call's reservation covers what it then costs,
    so the budget holds however many calls are in flight; at Llama's price it would be spent ~10 times."""
    user = unique("budget")
    key = await new_key(database_url, user, "free")
    body = {"model": LLAMA_70B, "messages": MESSAGES, "max_tokens": 40}
    admitted: list[str] = []
    denials: list[dict] = []
    async with httpx.AsyncClient(base_url=together_down["api"].url, timeout=30, headers=auth(key)) as client:
        for _ in range(6):  # a reservation is $0.00053, a call costs ~$0.00044: $0.002 lasts four or five
            for response in await asyncio.gather(*(client.post("/v1/chat/completions", json=body) for _ in range(4))):
                if response.status_code == 429:
                    denials.append(response.json())
                else:
                    assert response.status_code == 200
                    admitted.append(response.headers["x-request-id"])
            if denials:
                break
    assert denials and "budget" in denials[0]["message"]

    async def every_row():
        found = await db.fetch("SELECT request_id, cost, served_model FROM llm_usage WHERE user_id = $1", user)
        return found if len(found) >= len(admitted) else None

    rows = await eventually(every_row) or []
    assert sorted(r["request_id"] for r in rows) == sorted(admitted) and {r["served_model"] for r in rows} == {"gpt-4o"}
    spent = sum((r["cost"] for r in rows), Decimal(0))
    assert BUDGET_USD / 2 < spent <= BUDGET_USD
    _, counted = await settled_counters(redis_url, user)
    assert counted == sum(to_nano_usd(r["cost"]) for r in rows)


async def in_flight_reservation(redis_url: str, user: str) -> int:
    """The tokens a caller has reserved this minute and the one before (the limiter's :tok counter), read
    while its call is still with the provider."""
    redis = Redis.from_url(redis_url)
    try:
        base = "cw:{user:" + user + "}"
        await eventually(lambda: redis.keys(f"{base}:resv:*"), 10, 0.02)
        return sum(int(v) for v in (await redis.hgetall(f"{base}:tok")).values())
    finally:
        await redis.aclose()


async def reserved_while_in_flight(stack, provider: ThreadedHttpServer, redis_url: str, database_url: str,
                                   user: str, body: dict) -> tuple[int, httpx.Response]:
    """(tokens reserved for the call while the provider holds it, the call's answer)."""
    set_faults(provider, delay_s=1)
    key = await new_key(database_url, user, "pro")
    try:
        async with httpx.AsyncClient(base_url=stack["api"].url, timeout=30, headers=auth(key)) as client:
            call = asyncio.create_task(client.post("/v1/chat/completions", json=body))
            reserved = await in_flight_reservation(redis_url, user)
            return reserved, await call
    finally:
        set_faults(provider)


async def test_n_choices_reserve_n_times_the_completion_limit(stack, database_url, redis_url, db):
    body = {"model": LLAMA_70B, "messages": MESSAGES, "max_tokens": 30, "n": 4}
    reserved, response = await reserved_while_in_flight(stack, stack["together"], redis_url, database_url,
                                                        unique("choices"), body)
    assert reserved == prompt_tokens(COUNTER, body) + 4 * 30
    assert response.status_code == 200 and len(response.json()["choices"]) == 4
    row = await ledger_row(db, response.headers["x-request-id"])
    assert row["completion_tokens"] == 4 * 30


@pytest.mark.parametrize(("model", "limit"), [(LLAMA_70B, DEFAULT_MAX_TOKENS), (CAPPED, 16)])
async def test_a_call_without_max_tokens_reaches_the_provider_with_the_limit_that_was_reserved(
        stack, database_url, redis_url, model, limit):
    provider = stack["together"] if model == LLAMA_70B else stack["openai"]
    user = unique("nomax")
    body = {"model": model, "messages": messages_of(user)}
    reserved, response = await reserved_while_in_flight(stack, provider, redis_url, database_url, user, body)
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == limit
    assert reserved == prompt_tokens(COUNTER, body) + limit
    [sent] = [r for r in provider_requests(provider) if r["messages"] == body["messages"]]
    assert sent["max_tokens"] == limit


async def test_a_limit_past_the_models_ceiling_is_refused_before_anything_is_reserved(stack, database_url):
    key = await new_key(database_url, unique("ceiling"), "pro")
    async with httpx.AsyncClient(base_url=stack["api"].url, timeout=30, headers=auth(key)) as client:
        response = await client.post("/v1/chat/completions",
                                     json={"model": CAPPED, "messages": MESSAGES, "max_tokens": 17})
    assert response.status_code == 400
    assert response.json()["error"] == {"message": "max_tokens must be between 1 and 16", "type": "invalid_request_error",
                                         "param": "max_tokens", "code": "invalid_value"}


async def test_an_upstream_event_is_priced_for_its_provider_and_served_model(stack, db):
    """Upstream services name what answered; prices keyed provider/model win over the plain ones, and a
    model nobody priced is charged the fallback price and marked unpriced."""
    import nats

    user = unique("upstream")
    events = [LlmCompleted(request_id=unique("up"), user_id=user, provider=provider, model="summariser",
                           served_model=served, prompt_tokens=1_000_000, completion_tokens=0,
                           endpoint="/internal/summarise", success=True, latency_ms=5)
              for provider, served in (("openai", "gpt-4o"), ("azure", "gpt-4o"), ("openai", "gpt-9-unpriced"))]
    nc = await nats.connect(stack["nats_url"])
    try:
        for event in events:
            await publish_event(nc.jetstream(), "llm.completed", event, event.request_id)
    finally:
        await nc.close()
    rows = [await ledger_row(db, event.request_id) for event in events]
    assert [(r["served_model"], r["cost"], r["priced"]) for r in rows] == [
        ("gpt-4o", GPT_4O[0], True), ("gpt-4o", PLAIN_GPT_4O, True), ("gpt-9-unpriced", Decimal("10"), False)]
    alert = await eventually(lambda: db.fetchrow(
        "SELECT message FROM cost_alerts WHERE alert_key LIKE 'cost:unpriced:openai/gpt-9-unpriced:%'"))
    assert alert and "openai/gpt-9-unpriced has no price" in alert["message"]
