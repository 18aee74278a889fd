"""Admission at the gateway's HTTP edge, served in process: who is calling, what the limiter's answer
becomes (the original 429 body and the IETF RateLimit headers, 503 when no limiter answers), and what
an admitted call asks and records. The real limiter's decisions are tested in tests/integration."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from services.api.callers import Caller
from shared.events import LimitDecision, LimitRequest, utc_now
from tests.integration.helpers import auth, chat_body, from_ip
from tests.support.in_process import served
from tests.unit.api.in_process import FakePorts, ScriptedLimiter, in_process_api, settings

FREE_LIMIT = "Free tier limit: 10 LLM requests per hour. Upgrade for more."


def denied(request: LimitRequest) -> LimitDecision:
    return LimitDecision(allowed=False, tier=request.tier, limit=10, remaining=0, window_s=3600,
                         reset_at=utc_now() + timedelta(seconds=3599.5), retry_after_s=3599.5, reason=FREE_LIMIT,
                         limited_by="requests")


def unavailable(allowed: bool):
    reason = ("Rate limiter unavailable; request allowed without a limit check" if allowed
              else "Rate limiter unavailable; try again shortly")
    return lambda request: LimitDecision.unavailable(request, allowed, reason)


async def test_a_denial_is_the_original_429_body_with_the_ratelimit_headers_and_calls_no_provider():
    ports = FakePorts(limiter=ScriptedLimiter(denied))
    key = ports.keys.add("ann", "free")
    async with served(in_process_api(ports)) as client:
        answer = await client.post("/v1/chat/completions", json=chat_body(), headers=auth(key))
    assert answer.status_code == 429
    body = answer.json()
    assert list(body) == ["error", "message", "tier", "limit", "windowMs", "retryAfter", "upgradeUrl"]
    assert (body["error"], body["message"]) == ("Rate limit exceeded", FREE_LIMIT)
    assert (body["tier"], body["limit"], body["windowMs"], body["upgradeUrl"]) == ("free", 10, 3_600_000, "/pricing")
    retry_at = datetime.strptime(body["retryAfter"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert 3598 < (retry_at - datetime.now(UTC)).total_seconds() <= 3601
    assert answer.headers["Retry-After"] == "3600"
    assert answer.headers["RateLimit-Policy"] == '"free";q=10;w=3600'
    assert re.fullmatch(r'"free";r=0;t=360[01]', answer.headers["RateLimit"])
    assert not any(provider.calls for provider in ports.providers.values()) and not ports.published.events


async def test_no_limiter_answering_is_a_503_when_failing_closed_and_a_call_without_limits_when_open():
    closed = FakePorts(limiter=ScriptedLimiter(unavailable(False)))
    async with served(in_process_api(closed)) as client:
        refused = await client.post("/api/agent/query", json={"query": "q"})
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
    assert refused.json()["error"] == {"message": "Rate limiter unavailable; try again shortly",
                                       "type": "service_unavailable", "param": None, "code": "limiter_unavailable"}
    assert "RateLimit" not in refused.headers and not closed.published.events

    open_ = FakePorts(limiter=ScriptedLimiter(unavailable(True)))
    async with served(in_process_api(open_)) as client:
        served_anyway = await client.post("/api/agent/query", json={"query": "q"})
    assert served_anyway.status_code == 200 and served_anyway.json()["response"] == "Hello"
    assert "RateLimit" not in served_anyway.headers and len(open_.published.events) == 1


async def test_a_wrong_revoked_or_malformed_key_is_a_401_that_asks_nothing_of_the_limiter():
    ports = FakePorts()
    revoked = ports.keys.add("ann", "pro")
    await ports.keys.revoke(1, "test")
    async with served(in_process_api(ports)) as client:
        for headers in (auth("cw_not-a-real-key"), auth(revoked), {"Authorization": "Basic abc"}):
            answer = await client.post("/v1/chat/completions", json=chat_body(), headers=headers)
            assert answer.status_code == 401 and answer.headers["WWW-Authenticate"] == "Bearer"
            assert answer.json()["error"]["code"] == "invalid_api_key" and "cw_" not in answer.text
    assert not ports.limiter.asked


async def test_keys_that_cannot_be_checked_are_a_503_to_retry():
    ports = FakePorts()
    key = ports.keys.add("ann", "pro")
    ports.keys.unavailable = True
    async with served(in_process_api(ports)) as client:
        answer = await client.post("/v1/chat/completions", json=chat_body(), headers=auth(key))
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"
    assert answer.json()["error"]["code"] == "key_store_unavailable" and not ports.limiter.asked


async def test_an_admitted_call_asks_for_its_caller_address_and_policy_and_records_the_key():
    ports = FakePorts()
    key = ports.keys.add("ann", "pro")
    async with served(in_process_api(ports)) as client:
        plain = await client.post("/v1/chat/completions", json=chat_body(max_tokens=12),
                                  headers={**auth(key), **from_ip("203.0.113.7"), "X-Costwarden-Tags": "team=a"})
        long_form = await client.post("/api/agent/generate-long-form", json={"prompt": "essay", "max_tokens": 50},
                                      headers=from_ip("198.51.100.9, 127.0.0.1"))
    assert plain.status_code == 200 and plain.headers["X-Costwarden-Provider"] == "together_ai"
    assert long_form.status_code == 200 and long_form.json()["provider"] == "together_ai"
    assert plain.headers["RateLimit-Policy"] == '"pro";q=10;w=3600' and plain.headers["X-Request-Id"]
    first, second = ports.limiter.asked
    assert (first.user_id, first.tier, first.client_ip, first.policy, first.max_tokens) == (
        "ann", "pro", "203.0.113.7", "standard", 12)
    assert (second.user_id, second.tier, second.client_ip, second.policy, second.endpoint) == (
        None, "anonymous", "198.51.100.9", "strict", "/api/agent/generate-long-form")
    recorded = ports.published.events[0]
    assert (recorded.request_id, recorded.api_key_id, recorded.tags) == (plain.headers["X-Request-Id"], 1, {"team": "a"})
    assert Caller("ann", "pro", False, 1) == await ports.keys.caller_for(key)


@pytest.mark.parametrize(("trusted", "seen"), [(["127.0.0.1/32"], "203.0.113.7"), ([], "127.0.0.1")])
async def test_forwarded_for_counts_only_from_a_trusted_proxy(trusted, seen):
    ports = FakePorts()
    async with served(in_process_api(ports, settings(trusted_proxies=trusted))) as client:
        await client.post("/api/agent/query", json={"query": "q"}, headers=from_ip("203.0.113.7"))
    assert ports.limiter.asked[0].client_ip == seen
