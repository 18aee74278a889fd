"""The response cache on the real gateway, limiter and cost service, with the simulator counting the calls
it is sent: a repeated request reaches the provider once and is recorded at $0 with what it saved; no
answer crosses teams; a stream is cached and replayed as a stream, and plain and streamed requests share
their entry; Cache-Control and X-Costwarden-Cache-TTL are honoured; failed and abandoned calls, and a
stream that carried an error before its [DONE], are never cached; a hit still counts against the
caller's requests; the openai SDK works unchanged; with the cache's Redis stopped every call is still
answered, marked bypass."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import httpx
import openai
import pytest

from services.console.periods import preset
from services.console.pg_console_store import PgConsoleStore
from services.simulator.app import create_app as create_simulator
from tests.conftest import set_faults, sim_stats, start_services, unique, unique_ip
from tests.integration.helpers import auth, from_ip, new_key
from tests.integration.test_usage_accounting import ledger_row, read_chunks
from tests.servers import ThreadedHttpServer, nats_server, redis_server, stop_all
from tests.support.polling import eventually

pytestmark = pytest.mark.service

CACHED = "cached-llama"  # Together.ai's Llama-3-8b, cached per scope
SHARED = "shared-llama"  # the same, one entry for every caller
UNCACHED = "uncached-llama"  # the cache is off for it
EMBEDDINGS = "text-embedding-3-small"  # OpenAI's, cached
LLAMA_8B = "meta-llama/Llama-3-8b-chat-hf"


@pytest.fixture(scope="module")
def stack(base_env, tmp_path_factory):
    """Gateway, limiter and cost service on a bus and providers of their own; the cache's Redis
    (CACHE_REDIS_URL) is its own too, so that a test may stop it while the limiter and the api's
    REDIS_URL keep theirs."""
    route = [{"provider": "together_ai", "model": LLAMA_8B}]
    config = tmp_path_factory.mktemp("cache") / "costwarden.yaml"
    config.write_text(json.dumps({
        "cache": {"enabled": False, "ttl_s": 600},
        "models": {CACHED: {"routes": route, "cache": {"enabled": True}},
                   SHARED: {"routes": route, "cache": {"enabled": True, "shared": True}},
                   UNCACHED: route,
                   EMBEDDINGS: {"routes": [{"provider": "openai", "model": EMBEDDINGS}], "serves": "embeddings",
                                "cache": {"enabled": True}}}}))
    bus, bus_url = nats_server()
    cache_redis, cache_redis_url = redis_server()  # type: ignore[misc]
    together = ThreadedHttpServer(create_simulator("together_ai")).start()
    openai_sim = ThreadedHttpServer(create_simulator("openai")).start()
    env = {**base_env, "NATS_URL": bus_url, "COSTWARDEN_CONFIG": str(config), "PROVIDER_MAX_RETRIES": "0",
           "BREAKER_FAILURE_THRESHOLD": "1000000", "TOGETHER_BASE_URL": f"{together.url}/v1",
           "OPENAI_BASE_URL": f"{openai_sim.url}/v1"}
    services = start_services(("limiter", env, "LIMITER_PORT"), ("cost", env, "COST_PORT"),
                              ("api", {**env, "CACHE_REDIS_URL": cache_redis_url}, "API_PORT"))
    yield {"api": services[-1], "together": together, "openai": openai_sim, "cache_redis": cache_redis}
    stop_all(services)
    together.stop()
    openai_sim.stop()
    cache_redis.stop()
    bus.stop()


def chat(model: str = CACHED, tag: str | None = None, **extra) -> dict:
    """A request no other test sends (its question names `tag`)."""
    return {"model": model, "messages": [{"role": "user", "content": f"What is {tag or unique('q')}?"}],
            "max_tokens": 6, **extra}


def completions(stack) -> int:
    return sim_stats(stack["together"])["completions"]


async def client_of(stack, key: str | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=stack["api"].url, timeout=30, headers=auth(key) if key else {})


async def streamed(client: httpx.AsyncClient, body: dict, headers: dict | None = None) -> tuple[httpx.Response, list]:
    async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True},
                             headers=headers or {}) as response:
        lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    return response, lines


def streamed_text(lines: list[str]) -> str:
    return "".join((chunk["choices"] or [{}])[0].get("delta", {}).get("content") or ""
                   for line in lines if line != "data: [DONE]" for chunk in (json.loads(line[6:]),))


async def test_the_same_request_twice_reaches_the_provider_once_and_the_hit_is_recorded_at_no_cost(stack, db,
                                                                                                    database_url):
    user = unique("twice")
    key = await new_key(database_url, user, "pro")
    body, before = chat(), completions(stack)
    async with await client_of(stack, key) as client:
        first = await client.post("/v1/chat/completions", json=body)
        second = await client.post("/v1/chat/completions", json=body)
        assert completions(stack) == before + 1
        assert (first.headers["X-Costwarden-Cache"], second.headers["X-Costwarden-Cache"]) == ("miss", "hit")
        assert second.content == first.content and int(second.headers["Age"]) >= 0 and "Age" not in first.headers
        assert second.headers["X-Costwarden-Provider"] == "together_ai"

        paid = await ledger_row(db, first.headers["x-request-id"])
        hit = await ledger_row(db, second.headers["x-request-id"])
        assert (paid["cache_hit"], paid["saved_usd"]) == (False, 0) and paid["cost"] > 0
        assert (hit["cache_hit"], hit["cost"], hit["saved_usd"], hit["success"]) == (True, 0, paid["cost"], True)
        assert (hit["prompt_tokens"], hit["completion_tokens"], hit["provider"], hit["served_model"]) == (
            paid["prompt_tokens"], paid["completion_tokens"], "together_ai", LLAMA_8B)

        analytics = (await client.get("/api/costs/analytics", params={
            "start": "2020-01-01T00:00:00Z", "end": "2100-01-01T00:00:00Z"})).json()
    assert (analytics["requests"], analytics["cache_hits"], Decimal(analytics["cache_hit_rate"])) == (2, 1, 50)
    assert (analytics["prompt_tokens"], analytics["completion_tokens"]) == (  # the provider's tokens only
        paid["prompt_tokens"], paid["completion_tokens"])
    assert Decimal(analytics["saved_usd"]) == paid["cost"] == Decimal(analytics["cost"])
    [by_model] = analytics["by_model"]
    assert (by_model["key"], by_model["cache_hits"], Decimal(by_model["saved_usd"])) == (CACHED, 1, paid["cost"])
    rollup = await db.fetchrow("SELECT requests, cache_hits, saved_usd, cost, prompt_tokens FROM llm_cost_rollups "
                               "WHERE period = 'day' AND dimension = 'user' AND key = $1", user)
    assert (rollup["requests"], rollup["cache_hits"], rollup["saved_usd"], rollup["cost"], rollup["prompt_tokens"]) == (
        2, 1, paid["cost"], paid["cost"], paid["prompt_tokens"])

    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:  # what the console reads: its Overview's savings and the Costs page's rows, for the user and for all
        console = PgConsoleStore(pool)
        now = datetime.now(UTC)
        assert (await console.spend(user, now))["day"] == (paid["cost"], paid["cost"])
        assert (await console.spend(None, now))["day"][1] >= paid["cost"]
        for who in (user, None):
            rows = await console.breakdown(who, preset("24h", now), "model", "cost", 50)
            row = next(r for r in rows if r.key == CACHED)
            assert row.cache_hits >= 1 and row.saved >= paid["cost"] and row.hit_rate is not None
    finally:
        await pool.close()


async def team_key(db, database_url: str, team: str) -> str:
    user = unique("member")
    await db.execute("INSERT INTO teams (team_id, name) VALUES ($1, $1) ON CONFLICT DO NOTHING", team)
    await db.execute("INSERT INTO team_members (user_id, team_id) VALUES ($1, $2)", user, team)
    return await new_key(database_url, user, "pro")


async def test_no_answer_crosses_teams_and_a_team_shares_its_own(stack, db, database_url):
    red, blue = unique("red"), unique("blue")
    keys = [await team_key(db, database_url, red), await team_key(db, database_url, red),
            await team_key(db, database_url, blue)]
    body, before = chat(), completions(stack)
    answers = []
    for key in keys:
        async with await client_of(stack, key) as client:
            answers.append(await client.post("/v1/chat/completions", json=body))
    assert [a.headers["X-Costwarden-Cache"] for a in answers] == ["miss", "hit", "miss"]
    assert completions(stack) == before + 2
    hit = await ledger_row(db, answers[1].headers["x-request-id"])
    assert hit["cache_hit"] and hit["cost"] == 0


async def test_a_streamed_request_is_replayed_as_a_stream_and_plain_and_streamed_share_an_entry(stack, database_url):
    key = await new_key(database_url, unique("stream"), "pro")
    body, before = chat(), completions(stack)
    async with await client_of(stack, key) as client:
        first, first_lines = await streamed(client, body)
        second, second_lines = await streamed(client, body)
        plain = await client.post("/v1/chat/completions", json=body)
        usage_asked, usage_lines = await streamed(client, {**body, "stream_options": {"include_usage": True}})
    assert completions(stack) == before + 1
    assert [r.headers["X-Costwarden-Cache"] for r in (first, second, plain, usage_asked)] == ["miss", "hit", "hit",
                                                                                               "hit"]
    assert second.headers["content-type"].startswith("text/event-stream")
    assert second_lines == first_lines and second_lines[-1] == "data: [DONE]" and len(second_lines) > 3
    assert plain.json()["choices"][0]["message"] == {"role": "assistant", "content": streamed_text(first_lines)}
    assert plain.json()["choices"][0]["finish_reason"] == "stop"
    assert json.loads(usage_lines[-2][6:])["usage"]["completion_tokens"] == 6  # asked for: the usage chunk

    body, before = chat(), completions(stack)  # a plain entry, replayed as a stream
    async with await client_of(stack, key) as client:
        plain = await client.post("/v1/chat/completions", json=body)
        replay, lines = await streamed(client, body)
    assert completions(stack) == before + 1 and replay.headers["X-Costwarden-Cache"] == "hit"
    assert streamed_text(lines) == plain.json()["choices"][0]["message"]["content"] and lines[-1] == "data: [DONE]"


async def test_no_store_no_cache_and_max_age(stack, database_url):
    key = await new_key(database_url, unique("directives"), "pro")
    body, before = chat(), completions(stack)
    async with await client_of(stack, key) as client:
        async def ask(cache_control: str | None = None) -> httpx.Response:
            headers = {"Cache-Control": cache_control} if cache_control else {}
            return await client.post("/v1/chat/completions", json=body, headers=headers)

        assert [(await ask("no-store")).headers["X-Costwarden-Cache"] for _ in range(2)] == ["bypass", "bypass"]
        assert completions(stack) == before + 2  # neither read nor written
        first = await ask()
        assert first.headers["X-Costwarden-Cache"] == "miss" and completions(stack) == before + 3
        assert (await ask("no-store")).headers["X-Costwarden-Cache"] == "bypass"  # not read either
        fresh = await ask("no-cache")
        assert fresh.headers["X-Costwarden-Cache"] == "miss" and completions(stack) == before + 5
        refreshed = await ask()
        assert refreshed.headers["X-Costwarden-Cache"] == "hit" and refreshed.content == fresh.content != first.content

        await asyncio.sleep(1.1)  # the entry is now at least a second old
        assert (await ask("max-age=3600")).headers["X-Costwarden-Cache"] == "hit"
        too_old = await ask("max-age=0")
        assert too_old.headers["X-Costwarden-Cache"] == "miss" and completions(stack) == before + 6
        newest = await ask()
        assert newest.headers["X-Costwarden-Cache"] == "hit" and newest.content == too_old.content


async def test_an_entry_past_its_ttl_is_a_miss_and_bad_cache_headers_are_named(stack, database_url):
    key = await new_key(database_url, unique("ttl"), "pro")
    body, before = chat(), completions(stack)
    async with await client_of(stack, key) as client:
        lifetime = {"X-Costwarden-Cache-TTL": "1"}
        assert (await client.post("/v1/chat/completions", json=body, headers=lifetime)).status_code == 200
        assert (await client.post("/v1/chat/completions", json=body)).headers["X-Costwarden-Cache"] == "hit"
        await asyncio.sleep(2.1)
        expired = await client.post("/v1/chat/completions", json=body)
        assert expired.headers["X-Costwarden-Cache"] == "miss" and completions(stack) == before + 2

        for header, value in (("X-Costwarden-Cache-TTL", "0"), ("X-Costwarden-Cache-TTL", "soon"),
                              ("Cache-Control", "max-age=-1"), ("Cache-Control", "max-age")):
            refused = await client.post("/v1/chat/completions", json=body, headers={header: value})
            assert refused.status_code == 400, (header, value)
            assert refused.json()["error"]["param"] == header and refused.json()["error"]["code"] == \
                "invalid_cache_header"
        uncached = await client.post("/v1/chat/completions", json=chat(UNCACHED))
    assert uncached.status_code == 200 and "X-Costwarden-Cache" not in uncached.headers


async def test_failed_broken_and_abandoned_calls_are_never_cached(stack, database_url):
    key = await new_key(database_url, unique("failed"), "pro")
    together = stack["together"]
    async with await client_of(stack, key) as client:
        body = chat()
        set_faults(together, status=500, count=1)
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 502
        retried = await client.post("/v1/chat/completions", json=body)
        assert retried.status_code == 200 and retried.headers["X-Costwarden-Cache"] == "miss"

        body = chat(max_tokens=12)
        set_faults(together, break_after=3)
        try:
            _, lines = await streamed(client, body)
        finally:
            set_faults(together)
        assert "provider_stream_interrupted" in lines[-1]
        assert (await client.post("/v1/chat/completions", json=body)).headers["X-Costwarden-Cache"] == "miss"

        body = chat(max_tokens=20)
        set_faults(together, chunk_delay_s=0.1)
        try:
            async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
                assert len(await read_chunks(response, 2)) == 2  # then the client goes away
            await eventually(lambda: sim_stats(together)["streams_closed_early"] > 0, 10)
        finally:
            set_faults(together)
        assert (await client.post("/v1/chat/completions", json=body)).headers["X-Costwarden-Cache"] == "miss"


async def test_a_stream_with_an_error_then_done_is_not_cached_and_is_recorded_as_failed(stack, db, database_url):
    key = await new_key(database_url, unique("erred"), "pro")
    together = stack["together"]
    body = chat(max_tokens=12)
    async with await client_of(stack, key) as client:
        set_faults(together, error_after=2)  # vLLM-style: content, then {"error": ...}, then [DONE]
        try:
            response, lines = await streamed(client, body)
        finally:
            set_faults(together)
        assert json.loads(lines[-1][6:])["error"]["message"] == "the model failed mid-answer"
        again = await client.post("/v1/chat/completions", json=body)
    assert again.headers["X-Costwarden-Cache"] == "miss"
    row = await ledger_row(db, response.headers["x-request-id"])
    assert (row["success"], row["cache_hit"]) == (False, False)
    assert row["error_message"] == "together_ai sent an error in the stream: the model failed mid-answer"


async def test_a_free_tier_callers_eleventh_call_in_the_hour_is_denied_even_as_a_hit(stack, database_url, redis_url):
    from redis.asyncio import Redis

    user = unique("free")
    key = await new_key(database_url, user, "free")
    body, before = chat(), completions(stack)
    async with await client_of(stack, key) as client:
        answers = [await client.post("/v1/chat/completions", json=body) for _ in range(11)]
    assert [a.status_code for a in answers] == [200] * 10 + [429]
    assert [a.headers["X-Costwarden-Cache"] for a in answers[:10]] == ["miss"] + ["hit"] * 9
    assert answers[-1].json()["message"] == "Free tier limit: 10 LLM requests per hour. Upgrade for more."
    assert ";r=0;" in answers[9].headers["RateLimit"] and completions(stack) == before + 1
    redis = Redis.from_url(redis_url)
    try:
        base = "cw:{user:" + user + "}"
        assert await redis.zcard(f"{base}:req") == 10  # every hit counted as a request
        reserved = await eventually(lambda: _no_reservation(redis, base), 15)
        assert reserved, "a hit left a reservation, or the miss was never settled"
    finally:
        await redis.aclose()


async def _no_reservation(redis, base: str) -> bool:
    return not await redis.keys(f"{base}:resv:*")


async def test_embeddings_are_cached_and_anonymous_callers_only_share_a_shared_model(stack, database_url):
    key = await new_key(database_url, unique("embed"), "pro")
    body = {"model": EMBEDDINGS, "input": [unique("text"), "the same words"]}
    before = sim_stats(stack["openai"])["embeddings"]
    async with await client_of(stack, key) as client:
        first = await client.post("/v1/embeddings", json=body)
        second = await client.post("/v1/embeddings", json=body)
    assert (first.headers["X-Costwarden-Cache"], second.headers["X-Costwarden-Cache"]) == ("miss", "hit")
    assert second.json() == first.json() and sim_stats(stack["openai"])["embeddings"] == before + 1

    async with await client_of(stack) as anonymous:
        asked, shared, before = chat(), chat(SHARED), completions(stack)
        answers = [await anonymous.post("/v1/chat/completions", json=asked, headers=from_ip(unique_ip()))
                   for _ in range(2)]
        assert [a.headers["X-Costwarden-Cache"] for a in answers] == ["bypass", "bypass"]
        answers = [await anonymous.post("/v1/chat/completions", json=shared, headers=from_ip(unique_ip()))
                   for _ in range(2)]
        assert [a.headers["X-Costwarden-Cache"] for a in answers] == ["miss", "hit"]
    async with await client_of(stack, key) as client:  # a shared entry answers keyed callers too
        assert (await client.post("/v1/chat/completions", json=shared)).headers["X-Costwarden-Cache"] == "hit"
    assert completions(stack) == before + 3


async def test_the_openai_sdk_works_unchanged_against_a_cached_gateway(stack, database_url):
    key = await new_key(database_url, unique("sdk"), "pro")
    client = openai.AsyncOpenAI(base_url=f"{stack['api'].url}/v1", api_key=key, max_retries=0)
    body, before = chat(), completions(stack)
    plain = [await client.chat.completions.with_raw_response.create(**body) for _ in range(2)]
    assert [r.headers["x-costwarden-cache"] for r in plain] == ["miss", "hit"]
    assert plain[1].parse().choices[0].message.content == plain[0].parse().choices[0].message.content

    texts = []
    for _ in range(2):
        stream = await client.chat.completions.create(**chat(tag="streamed by the SDK"), stream=True,
                                                      stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
        texts.append("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    assert texts[0] == texts[1] and texts[0] and completions(stack) == before + 2

    vectors = [await client.embeddings.create(model=EMBEDDINGS, input=f"embedded by the SDK {key[-6:]}")
               for _ in range(2)]
    assert vectors[0].data[0].embedding == vectors[1].data[0].embedding
    await client.close()


async def test_with_the_caches_redis_stopped_every_call_is_answered_as_a_bypass(stack, database_url):
    key = await new_key(database_url, unique("down"), "pro")
    body = chat()
    async with await client_of(stack, key) as client:
        assert (await client.post("/v1/chat/completions", json=body)).headers["X-Costwarden-Cache"] == "miss"
        stack["cache_redis"].stop()
        try:
            answers = [await client.post("/v1/chat/completions", json=body) for _ in range(3)]
            _, lines = await streamed(client, body)
        finally:
            stack["cache_redis"].start()
    assert [a.status_code for a in answers] == [200] * 3
    assert [a.headers["X-Costwarden-Cache"] for a in answers] == ["bypass"] * 3 and lines[-1] == "data: [DONE]"
