"""The limiter on real NATS and Redis: exact grants across replicas, reservations and settlement,
Redis outages in both failure modes, and malformed events."""

from __future__ import annotations

import asyncio
import json
import signal
from decimal import Decimal

import pytest
from redis.asyncio import Redis

from services.limiter.limiter import Limiter
from services.limiter.policy import LimitPolicy
from services.limiter.redis_limiter_store import RedisLimiterStore
from shared.events import LimitDecision, LimitRequest, LlmCompleted
from shared.policy import DEFAULT_MODELS, DEFAULT_TIERS, TierLimits
from shared.pricing import PriceCatalog
from tests.conftest import start_service, unique
from tests.integration.helpers import CHEAP_MODEL, stream_messages


class RecordedViolations:
    def __init__(self) -> None:
        self.published: list = []

    async def publish(self, violation) -> None:
        self.published.append(violation)


def ask(user: str, tier: str = "pro", **fields) -> bytes:
    request = LimitRequest(request_id=unique("req"), user_id=user, tier=tier, model=CHEAP_MODEL, max_tokens=16,
                           **fields)
    return request.model_dump_json().encode()


@pytest.mark.service
async def test_three_replicas_and_500_concurrent_callers_never_exceed_the_limit(base_env, limiter, nc):
    replicas = [limiter] + [start_service("limiter", base_env, "LIMITER_PORT") for _ in range(2)]
    try:
        user = unique("pro")
        replies = await asyncio.gather(*(nc.request("llm.request", ask(user), timeout=10) for _ in range(500)))
        decisions = [LimitDecision.model_validate_json(r.data) for r in replies]
        assert sum(d.allowed for d in decisions) == DEFAULT_TIERS["pro"].requests
        assert sum(not d.allowed for d in decisions) == 400
        remaining = sorted(d.remaining for d in decisions if d.allowed)
        assert remaining == list(range(100))
        # every replica took a share of the work
        served = [received_requests(replica) for replica in replicas]
        assert all(count > 0 for count in served), served
    finally:
        for replica in replicas[1:]:
            replica.stop()


@pytest.mark.service
async def test_a_replica_told_to_stop_mid_stream_answers_every_request_it_took(base_env, limiter, nc):
    second = start_service("limiter", base_env, "LIMITER_PORT")
    user = unique("drain")
    pending: list[asyncio.Task] = []

    async def steady_stream(seconds: float) -> None:
        for _ in range(int(seconds * 400)):
            pending.append(asyncio.create_task(nc.request("llm.request", ask(user, tier="enterprise"), timeout=5)))
            await asyncio.sleep(1 / 400)

    stream = asyncio.create_task(steady_stream(1.0))
    await asyncio.sleep(0.4)
    took = received_requests(second)
    second.process.send_signal(signal.SIGTERM)
    await stream
    replies = await asyncio.gather(*pending, return_exceptions=True)
    assert await asyncio.to_thread(second.process.wait, 30) in (0, -signal.SIGTERM)
    assert took > 0, "the second replica had a share of the stream before it was told to stop"
    failures = [r for r in replies if isinstance(r, BaseException)]
    assert not failures, failures[:3]
    assert all(LimitDecision.model_validate_json(r.data).allowed for r in replies)


@pytest.mark.service
async def test_the_limiter_answers_again_after_nats_restarts(base_env):
    import nats

    from tests.servers import nats_server

    nats_srv, nats_url = nats_server()
    limiter = start_service("limiter", {**base_env, "NATS_URL": nats_url}, "LIMITER_PORT")
    nc = await nats.connect(nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
    try:
        before = await nc.request("llm.request", ask(unique()), timeout=5)
        nats_srv.stop()
        nats_srv.start()
        after = None
        for _ in range(40):
            try:
                after = await nc.request("llm.request", ask(unique()), timeout=1)
                break
            except Exception:  # reconnecting: the client or the limiter is not back yet
                await asyncio.sleep(0.25)
    finally:
        await nc.close()
        limiter.stop()
        nats_srv.stop()
    assert LimitDecision.model_validate_json(before.data).allowed
    assert after is not None and LimitDecision.model_validate_json(after.data).allowed


def received_requests(service) -> float:
    import httpx

    metrics = httpx.get(f"{service.url}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("costwarden_requests_handled_seconds_count") and 'subject="llm.request"' in line)


def tight_policy(tokens_per_minute: int = 1000, budget: str = "1.00") -> LimitPolicy:
    tiers = {name: TierLimits(requests=100, strict_requests=10, tokens_per_minute=tokens_per_minute,
                              daily_budget_usd=Decimal(budget)) for name in DEFAULT_TIERS}
    return LimitPolicy(tiers, PriceCatalog.with_overrides({}), DEFAULT_MODELS, default_max_tokens=256, reservation_cap_tokens=5000)


def request(user: str, max_tokens: int, model: str = CHEAP_MODEL, prompt: int = 0) -> LimitRequest:
    return LimitRequest(request_id=unique("req"), user_id=user, tier="free", model=model, max_tokens=max_tokens,
                        prompt_tokens_estimate=prompt)


def completed(req: LimitRequest, prompt: int, completion: int) -> LlmCompleted:
    return LlmCompleted(id=req.request_id, request_id=req.request_id, user_id=req.user_id, provider="together_ai",
                        model=req.model, prompt_tokens=prompt, completion_tokens=completion, endpoint="/v1/chat/completions",
                        success=True, latency_ms=10)


@pytest.fixture
async def redis(redis_url):
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.mark.adapter
async def test_tokens_are_reserved_at_worst_case_and_settled_to_actual_use(redis):
    limiter = Limiter(tight_policy(tokens_per_minute=1000), RedisLimiterStore(redis, 900), "closed", RecordedViolations())
    user = unique()
    first = request(user, max_tokens=600, prompt=100)
    decision = await limiter.decide(first)
    assert decision.allowed and decision.reserved_tokens == 700

    second = request(user, max_tokens=600, prompt=100)
    denied = await limiter.decide(second)
    assert not denied.allowed and denied.limited_by == "tokens"
    assert denied.reason == "Free tier limit: 1000 LLM tokens per minute. Upgrade for more."
    assert 1 <= denied.retry_after_s <= 60

    assert await limiter.settle([completed(first, prompt=90, completion=10)]) == 1
    assert await limiter.settle([completed(first, prompt=90, completion=10)]) == 0  # settling twice is a no-op
    assert (await limiter.decide(second)).allowed  # 100 used + 700 reserved <= 1000


@pytest.mark.adapter
async def test_daily_dollar_budget_counts_reservations_and_refunds_on_settlement(redis):
    # An unpriced model is reserved at the fallback rate ($30 per 1M output tokens): 5000 tokens = $0.15.
    limiter = Limiter(tight_policy(tokens_per_minute=10**9, budget="0.40"), RedisLimiterStore(redis, 900), "closed", RecordedViolations())
    user = unique()
    granted = [request(user, max_tokens=5000, model="some-unpriced-model") for _ in range(2)]
    for req in granted:
        decision = await limiter.decide(req)
        assert decision.allowed and decision.reserved_usd == Decimal("0.15")
    third = request(user, max_tokens=5000, model="some-unpriced-model")
    denied = await limiter.decide(third)
    assert not denied.allowed and denied.limited_by == "budget"
    assert "daily LLM budget ($0.40)" in denied.reason
    # the first call actually used 10 tokens: most of its reservation comes back
    await limiter.settle([completed(granted[0], prompt=5, completion=5)])
    assert (await limiter.decide(third)).allowed


@pytest.mark.adapter
async def test_a_cache_hit_settles_a_reservation_its_request_made_and_a_hit_that_reserved_nothing_is_a_no_op(redis):
    limiter = Limiter(tight_policy(tokens_per_minute=1000), RedisLimiterStore(redis, 900), "closed", RecordedViolations())
    user = unique()
    reserved = request(user, max_tokens=600, prompt=100)  # an upstream service that reserved, then hit its cache
    assert (await limiter.decide(reserved)).allowed
    second = request(user, max_tokens=600, prompt=100)
    assert not (await limiter.decide(second)).allowed
    assert await limiter.settle([completed(reserved, prompt=90, completion=10).model_copy(
        update={"cache_hit": True})]) == 1
    assert (await limiter.decide(second)).allowed  # nothing used, nothing reserved but the second's 700
    hit = request(user, max_tokens=600).model_copy(update={"cache_hit": True})
    assert (await limiter.decide(hit)).allowed
    assert await limiter.settle([completed(hit, prompt=90, completion=10).model_copy(update={"cache_hit": True})]) == 0


@pytest.mark.adapter
async def test_a_denied_request_consumes_nothing(redis):
    limiter = Limiter(tight_policy(tokens_per_minute=500), RedisLimiterStore(redis, 900), "closed", RecordedViolations())
    user = unique()
    assert not (await limiter.decide(request(user, max_tokens=800))).allowed
    decision = await limiter.decide(request(user, max_tokens=400))
    assert decision.allowed and decision.remaining == 99


@pytest.mark.adapter
async def test_asking_twice_with_one_request_id_counts_once(redis):
    limiter = Limiter(tight_policy(), RedisLimiterStore(redis, 900), "closed", RecordedViolations())
    req = request(unique(), max_tokens=10)
    first, again = await limiter.decide(req), await limiter.decide(req)
    assert first.allowed and again.allowed
    assert first.remaining == again.remaining == 99


@pytest.mark.service
async def test_llm_completed_on_the_bus_settles_the_reservation(limiter, nc, redis):
    """End to end: the limiter's durable consumer of llm.completed releases the unused reservation."""
    user = unique("free")
    req = LimitRequest(request_id=unique("req"), user_id=user, tier="free", model=CHEAP_MODEL, max_tokens=15000)
    decision = LimitDecision.model_validate_json((await nc.request("llm.request", req.model_dump_json().encode(),
                                                                   timeout=5)).data)
    assert decision.allowed and decision.reserved_tokens == 15000
    blocked = LimitRequest(request_id=unique("req"), user_id=user, tier="free", model=CHEAP_MODEL, max_tokens=15000)
    reply = LimitDecision.model_validate_json((await nc.request("llm.request", blocked.model_dump_json().encode(),
                                                                timeout=5)).data)
    assert not reply.allowed and reply.limited_by == "tokens"

    js = nc.jetstream()
    await js.publish("llm.completed", completed(req, 20, 30).model_dump_json().encode(),
                     headers={"Nats-Msg-Id": req.request_id})
    for _ in range(100):
        if not await redis.exists(f"cw:{{user:{user}}}:resv:{req.request_id}"):
            break
        await asyncio.sleep(0.05)
    retry = LimitRequest(request_id=unique("req"), user_id=user, tier="free", model=CHEAP_MODEL, max_tokens=15000)
    reply = LimitDecision.model_validate_json((await nc.request("llm.request", retry.model_dump_json().encode(),
                                                                timeout=5)).data)
    assert reply.allowed


@pytest.mark.adapter
@pytest.mark.parametrize("mode", ["closed", "open"])
async def test_redis_unreachable_fails_in_the_configured_mode(mode):
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_timeout=0.2, socket_connect_timeout=0.2)
    limiter = Limiter(tight_policy(), RedisLimiterStore(dead, 900), mode, RecordedViolations())
    decision = await limiter.decide(request(unique(), max_tokens=10))
    await dead.aclose()
    assert decision.limited_by == "unavailable"
    assert decision.allowed is (mode == "open")
    assert "Rate limiter storage unavailable" in decision.reason


@pytest.mark.service
@pytest.mark.parametrize("mode", ["closed", "open"])
async def test_gateway_when_the_limiter_redis_is_down(base_env, mode):
    """A limiter whose Redis is stopped answers per its mode; the gateway turns closed into a 503."""
    import httpx

    from tests.servers import redis_server

    redis_srv, redis_url = redis_server()
    env = {**base_env, "REDIS_URL": redis_url, "LIMITER_FAILURE_MODE": mode}
    from tests.servers import nats_server

    nats_srv, nats_url = nats_server()  # a bus of its own, so no other limiter answers
    env["NATS_URL"] = nats_url
    limiter = start_service("limiter", env, "LIMITER_PORT")
    api = start_service("api", env, "API_PORT")
    try:
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
            assert (await client.post("/api/agent/query", json={"query": "q"})).status_code == 200
            redis_srv.stop()
            response = await client.post("/api/agent/query", json={"query": "q"})
            ready = await client.get(f"{limiter.url}/health/ready")
            live = await client.get(f"{limiter.url}/health/live")
    finally:
        api.stop()
        limiter.stop()
        nats_srv.stop()
    assert live.status_code == 200 and ready.status_code == 503
    if mode == "closed":
        assert response.status_code == 503
        assert response.json()["error"]["message"] == "Rate limiter storage unavailable; try again shortly"
        assert response.headers["Retry-After"] == "5"
    else:
        assert response.status_code == 200
        assert "limiter storage unreachable (ConnectionError); failing open" in limiter.logs()


@pytest.mark.service
@pytest.mark.parametrize("mode", ["closed", "open"])
async def test_gateway_when_no_limiter_answers(base_env, mode):
    import httpx

    from tests.servers import nats_server

    nats_srv, nats_url = nats_server()
    api = start_service("api", {**base_env, "NATS_URL": nats_url, "LIMITER_FAILURE_MODE": mode}, "API_PORT")
    try:
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
            response = await client.post("/api/agent/query", json={"query": "q"})
    finally:
        api.stop()
        nats_srv.stop()
    if mode == "closed":
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "limiter_unavailable"
    else:
        assert response.status_code == 200


@pytest.mark.service
async def test_malformed_requests_go_to_the_dead_letter_subject_and_the_limiter_keeps_answering(limiter, nc):
    js = nc.jetstream()
    bad = await nc.request("llm.request", b'{"request_id": "x", "tier": 7', timeout=5)
    assert json.loads(bad.data)["error"] == "invalid request"
    invalid = await nc.request("llm.request", json.dumps({"request_id": "r-neg", "tier": "free",
                                                          "model": "m", "max_tokens": -5}).encode(), timeout=5)
    assert "max_tokens" in json.loads(invalid.data)["reason"]
    await js.publish("llm.completed", b'{"request_id": "broken-completed", "prompt_tokens": -1}')

    good = await nc.request("llm.request", ask(unique()), timeout=5)
    assert LimitDecision.model_validate_json(good.data).allowed

    for _ in range(50):
        letters = [m for m in await stream_messages(js, "DLQ", "dlq.>") if m["service"] == "limiter"]
        reasons = {letter["subject"]: letter["reason"] for letter in letters}
        if "llm.completed" in reasons and "llm.request" in reasons:
            break
        await asyncio.sleep(0.1)
    assert any(letter["reason"].startswith("malformed JSON") for letter in letters
               if letter["subject"] == "llm.request")
    assert any("max_tokens" in letter["reason"] for letter in letters if letter["subject"] == "llm.request")
    completed_reasons = [letter["reason"] for letter in letters if letter["subject"] == "llm.completed"]
    assert any("prompt_tokens" in reason for reason in completed_reasons)
