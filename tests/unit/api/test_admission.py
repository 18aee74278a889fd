"""Admission at the gateway's HTTP edge, served in process on an in-memory key table: who is calling
(401 for a wrong key, 503 while keys cannot be checked), from which address, and what an admitted call
asks the limiter and records. What each limiter outcome becomes is in test_admission_over_http.py; the
real limiter's decisions are tested in tests/integration."""

from __future__ import annotations

import pytest

from tests.integration.helpers import auth, chat_body, from_ip
from tests.support.in_process import served
from tests.unit.api.in_process import FakePorts, in_process_api, settings


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


@pytest.mark.parametrize(("trusted", "seen"), [(["127.0.0.1/32"], "203.0.113.7"), ([], "127.0.0.1")])
async def test_forwarded_for_counts_only_from_a_trusted_proxy(trusted, seen):
    ports = FakePorts()
    async with served(in_process_api(ports, settings(trusted_proxies=trusted))) as client:
        await client.post("/api/agent/query", json={"query": "q"}, headers=from_ip("203.0.113.7"))
    assert ports.limiter.asked[0].client_ip == seen
