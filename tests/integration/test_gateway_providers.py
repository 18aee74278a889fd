"""Providers behind the gateway: the openai SDK, streaming, fallback, the circuit breaker, timeouts,
and llm.completed stored once per request."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from services.simulator.app import create_app as create_simulator
from tests.conftest import set_faults, sim_stats, start_service, unique
from tests.integration.helpers import CHEAP_MODEL, auth, chat_body, new_key, stream_messages
from tests.servers import ThreadedHttpServer, free_port
from tests.support.polling import eventually

pytestmark = pytest.mark.service


async def completed_events(nc, request_ids: set[str]) -> list[dict]:
    events = await stream_messages(nc.jetstream(), "LLM", "llm.completed")
    return [e for e in events if e.get("request_id") in request_ids]


async def test_openai_sdk_plain_call(gateway, database_url, nc):
    user = unique("sdk")
    key = await new_key(database_url, user, "pro")
    client = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(
        model=CHEAP_MODEL, messages=[{"role": "user", "content": "Hello there"}], max_tokens=6)
    completion = raw.parse()
    assert completion.choices[0].message.content.startswith("This is a simulated")
    assert completion.usage.completion_tokens == 6
    request_id = raw.headers["x-request-id"]
    [event] = await completed_events(nc, {request_id})
    assert event["user_id"] == user and event["success"] is True and event["provider"] == "together_ai"
    assert (event["prompt_tokens"], event["completion_tokens"]) == (completion.usage.prompt_tokens, 6)
    models = await client.models.list()
    assert CHEAP_MODEL in {m.id for m in models.data}


async def test_openai_sdk_streaming_takes_usage_from_the_final_chunk(gateway, database_url, nc):
    key = await new_key(database_url, unique("sdk"), "pro")
    client = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(
        model=CHEAP_MODEL, messages=[{"role": "user", "content": "Stream please"}], max_tokens=5, stream=True)
    text = ""
    async for chunk in raw.parse():
        assert chunk.choices, "a caller that did not ask for usage gets no usage-only chunk"
        text += chunk.choices[0].delta.content or ""
    assert text == "This is a simulated answer"
    [event] = await completed_events(nc, {raw.headers["x-request-id"]})
    assert event["success"] is True and event["completion_tokens"] == 5 and event["prompt_tokens"] > 0

    usage_chunks = []
    stream = await client.chat.completions.create(
        model=CHEAP_MODEL, messages=[{"role": "user", "content": "again"}], max_tokens=3, stream=True,
        stream_options={"include_usage": True})
    async for chunk in stream:
        if chunk.usage:
            usage_chunks.append(chunk.usage)
    assert [u.completion_tokens for u in usage_chunks] == [3]


async def test_each_request_is_in_the_stream_exactly_once_even_if_published_twice(gateway, database_url, nc):
    key = await new_key(database_url, unique("once"), "pro")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        responses = await asyncio.gather(*(client.post("/v1/chat/completions", json=chat_body(), headers=auth(key))
                                           for _ in range(20)))
    ids = {r.headers["x-request-id"] for r in responses}
    assert len(ids) == 20
    # an upstream service retrying its publish with the same Nats-Msg-Id does not add a record
    js = nc.jetstream()
    one = (await completed_events(nc, ids))[0]
    import json as _json

    ack = await js.publish("llm.completed", _json.dumps(one).encode(), headers={"Nats-Msg-Id": one["request_id"]})
    assert ack.duplicate
    events = await completed_events(nc, ids)
    assert sorted(e["request_id"] for e in events) == sorted(ids)


@pytest.fixture
def flaky_stack(base_env, limiter):
    """A gateway with its own two providers, a breaker that opens after 2 failed calls for 1 s."""
    together = ThreadedHttpServer(create_simulator("together_ai")).start()
    openai_sim = ThreadedHttpServer(create_simulator("openai")).start()
    env = {**base_env, "TOGETHER_BASE_URL": f"{together.url}/v1", "OPENAI_BASE_URL": f"{openai_sim.url}/v1",
           "BREAKER_FAILURE_THRESHOLD": "2", "BREAKER_COOLDOWN_S": "1", "PROVIDER_MAX_RETRIES": "1",
           "PROVIDER_TIMEOUT_S": "0.5"}
    api = start_service("api", env, "API_PORT")
    yield api, together, openai_sim
    api.stop()
    together.stop()
    openai_sim.stop()


async def test_fallback_to_openai_and_the_circuit_breaker(flaky_stack, database_url, nc):
    api, together, openai_sim = flaky_stack
    key = await new_key(database_url, unique("fb"), "enterprise")
    async with httpx.AsyncClient(base_url=api.url, timeout=30, headers=auth(key)) as client:
        set_faults(together, status=500, count=1000)
        first = await client.post("/v1/chat/completions", json=chat_body())
        assert first.status_code == 200 and first.headers["X-Costwarden-Provider"] == "openai"
        assert sim_stats(together)["completions"] == 2  # one call plus one retry
        assert first.json()["model"] == "gpt-4o-mini"  # the fallback route of the 8b model

        await client.post("/v1/chat/completions", json=chat_body())  # second failed call: the breaker opens
        calls_when_open = sim_stats(together)["completions"]
        for _ in range(3):
            response = await client.post("/v1/chat/completions", json=chat_body())
            assert response.status_code == 200 and response.headers["X-Costwarden-Provider"] == "openai"
        assert sim_stats(together)["completions"] == calls_when_open  # skipped while open
        assert (await client.get("/health/ready")).json()["providers"]["together_ai"] == "open"

        set_faults(together, status=None, count=0)
        await asyncio.sleep(1.1)  # cool-down over: the next call probes Together.ai again
        probe = await client.post("/v1/chat/completions", json=chat_body())
        assert probe.headers["X-Costwarden-Provider"] == "together_ai"
        assert (await client.get("/health/ready")).json()["providers"]["together_ai"] == "closed"

    [event] = await completed_events(nc, {first.headers["x-request-id"]})
    assert event["provider"] == "openai" and event["success"] is True


async def test_all_providers_failing_is_a_clear_502_and_is_recorded(flaky_stack, database_url, nc):
    api, together, openai_sim = flaky_stack
    set_faults(together, status=503, count=1000)
    set_faults(openai_sim, status=500, count=1000)
    key = await new_key(database_url, unique("fail"), "pro")
    async with httpx.AsyncClient(base_url=api.url, timeout=30, headers=auth(key)) as client:
        response = await client.post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "provider_error" and error["type"] == "upstream_error"
    assert "together_ai: HTTP 503" in error["message"] and "openai: HTTP 500" in error["message"]
    assert "Traceback" not in response.text and "test-openai-key" not in response.text
    events = [e for e in await stream_messages(nc.jetstream(), "LLM", "llm.completed")
              if not e["success"] and "openai: HTTP 500" in (e["error"] or "")]
    assert events and events[-1]["completion_tokens"] == 0


async def test_provider_timeouts_are_a_504(flaky_stack, database_url):
    api, together, openai_sim = flaky_stack
    set_faults(together, delay_s=2)
    set_faults(openai_sim, delay_s=2)
    key = await new_key(database_url, unique("slow"), "pro")
    async with httpx.AsyncClient(base_url=api.url, timeout=30, headers=auth(key)) as client:
        response = await client.post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "provider_timeout"


async def test_a_provider_rejecting_the_request_is_not_retried_or_failed_over(flaky_stack, database_url):
    api, together, openai_sim = flaky_stack
    set_faults(together, status=400, count=1)
    key = await new_key(database_url, unique("rej"), "pro")
    async with httpx.AsyncClient(base_url=api.url, timeout=30, headers=auth(key)) as client:
        response = await client.post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 502
    assert "together_ai: HTTP 400" in response.json()["error"]["message"]
    assert sim_stats(together)["completions"] == 1 and sim_stats(openai_sim)["completions"] == 0


async def test_calls_served_while_nats_is_down_reach_the_stream_once_it_is_back(base_env, database_url):
    """With the bus away (limiter failing open), calls are still answered, and their llm.completed
    events wait in the gateway's backlog until NATS is back, then land in the stream once each."""
    import nats

    from tests.servers import nats_server

    nats_srv, nats_url = nats_server()
    api = start_service("api", {**base_env, "NATS_URL": nats_url, "LIMITER_FAILURE_MODE": "open"}, "API_PORT")
    try:
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
            before = await client.post("/api/agent/query", json={"query": "before the outage"})
            nats_srv.stop()
            during = [await client.post("/api/agent/query", json={"query": f"during {i}"}) for i in range(3)]
            backlog_during = metric(await client.get("/metrics"), "costwarden_api_unpublished_backlog")
            nats_srv.start()
            ids = {r.json()["requestId"] for r in [before, *during]}
            nc = await nats.connect(nats_url)
            try:
                for _ in range(100):
                    events = await completed_events(nc, ids)
                    if len(events) >= len(ids):
                        break
                    await asyncio.sleep(0.2)
            finally:
                await nc.close()
            backlog_after = metric(await client.get("/metrics"), "costwarden_api_unpublished_backlog")
    finally:
        api.stop()
        nats_srv.stop()
    assert [r.status_code for r in [before, *during]] == [200, 200, 200, 200]
    assert backlog_during == 3 and backlog_after == 0
    assert sorted(e["request_id"] for e in events) == sorted(ids)
    assert "backlog of unpublished llm.completed events cleared" in api.logs()


def metric(response: httpx.Response, name: str) -> float:
    [value] = [float(line.rsplit(" ", 1)[1]) for line in response.text.splitlines() if line.startswith(name + " ")]
    return value


async def test_a_stream_that_goes_quiet_past_the_timeout_is_cut_and_recorded(flaky_stack, cost_service, database_url,
                                                                            db):
    api, together, _ = flaky_stack  # PROVIDER_TIMEOUT_S 0.5: the first byte comes at once, the next after 1 s
    set_faults(together, chunk_delay_s=1)
    key = await new_key(database_url, unique("quiet"), "pro")
    async with httpx.AsyncClient(base_url=api.url, timeout=30, headers=auth(key)) as client:
        response = await client.post("/v1/chat/completions", json=chat_body(stream=True))
    assert response.status_code == 200
    assert '"code": "provider_stream_interrupted"' in response.text and "[DONE]" not in response.text
    row = await eventually(lambda: db.fetchrow("SELECT * FROM llm_usage WHERE request_id = $1",
                                               response.headers["x-request-id"]))
    assert row["error_message"] == "together_ai stream interrupted: ReadTimeout"
    assert row["usage_source"] == "estimated" and row["prompt_tokens"] > 0


async def test_a_provider_that_refuses_connections_fails_over_at_once_and_bills_nothing(base_env, limiter,
                                                                                         database_url, nc):
    openai_sim = ThreadedHttpServer(create_simulator("openai")).start()
    closed_port = free_port()
    api = start_service("api", {**base_env, "TOGETHER_BASE_URL": f"http://127.0.0.1:{closed_port}/v1",
                                "OPENAI_BASE_URL": f"{openai_sim.url}/v1", "PROVIDER_MAX_RETRIES": "0"}, "API_PORT")
    try:
        key = await new_key(database_url, unique("refused"), "pro")
        async with httpx.AsyncClient(base_url=api.url, timeout=30, headers=auth(key)) as client:
            served = await client.post("/v1/chat/completions", json=chat_body())
            set_faults(openai_sim, status=503, count=1000)
            failed = await client.post("/v1/chat/completions", json=chat_body())
    finally:
        api.stop()
        openai_sim.stop()
    assert served.status_code == 200 and served.headers["X-Costwarden-Provider"] == "openai"
    assert failed.status_code == 502
    assert "together_ai: connection failed (ClientConnectorError)" in failed.json()["error"]["message"]
    [event] = await completed_events(nc, {failed.headers["x-request-id"]})
    assert event["error"] == "together_ai: connection failed (ClientConnectorError); openai: HTTP 503 simulated " \
        "failure from openai"
    assert (event["prompt_tokens"], event["usage_source"]) == (0, "provider")  # neither provider worked on it
