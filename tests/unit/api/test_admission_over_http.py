"""The api in-process, its ports faked (create_app's `resources`): each outcome of the limiter client
becomes its HTTP answer in one place, the model is resolved before the limiter is asked, and a call no
provider answered is a 502 naming the request it was recorded under."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.api import app as api_app
from services.api.admission import Admission, Denied, Granted, LimitOutcome, ModelRefused, Unavailable, Unchecked
from services.api.cached_key_store import CachedKeyStore, StoredKey
from services.api.gateway import Gateway
from services.api.http.state import ApiState
from services.api.nats_limiter_client import outcome_of
from services.api.providers import ProviderError
from services.api.settings import ApiConfig, ApiSettings
from shared.events import LimitDecision, LimitRequest
from tests.unit.api.fakes import Recorded, Words, router_of

MODEL = "meta-llama/Llama-3-8b-chat-hf"
ANSWER = {"choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 5, "completion_tokens": 1}}
RESET = datetime.now(UTC) + timedelta(minutes=30)


def decision(allowed: bool, **fields: Any) -> LimitDecision:
    return LimitDecision(**{"allowed": allowed, "tier": "anonymous", "limit": 3, "remaining": 0 if not allowed else 2,
                            "window_s": 3600, "reset_at": RESET, "retry_after_s": 0 if allowed else 1800,
                            "reason": None if allowed else "Anonymous tier limit: 3 LLM requests per hour.",
                            "limited_by": None if allowed else "requests", **fields})


class NoKeys:
    async def find(self, digest: str) -> StoredKey | None:
        return None


class FakeLimiter:
    def __init__(self, outcome: LimitOutcome) -> None:
        self.outcome = outcome
        self.asked: list[LimitRequest] = []

    async def ask(self, request: LimitRequest) -> LimitOutcome:
        self.asked.append(request)
        return self.outcome


class FakeProvider:
    name = "together_ai"

    def __init__(self, fails: bool = False) -> None:
        self.fails = fails

    async def complete(self, model: str, payload: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
        if self.fails:
            raise ProviderError("together_ai", "down", status=503)
        return ANSWER, json.dumps(ANSWER).encode()

    async def open_stream(self, model: str, payload: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    async def aclose(self) -> None: ...


def client(limiter: FakeLimiter, recorded: Recorded, provider: FakeProvider | None = None) -> TestClient:
    settings = ApiSettings(_env_file=None, costwarden_config=None, provider_max_retries=0)
    config = ApiConfig()
    provider = provider or FakeProvider()

    @asynccontextmanager
    async def fakes(settings: ApiSettings) -> AsyncIterator[ApiState]:
        router = router_of(provider)
        gateway = Gateway(router, recorded, Words())
        yield ApiState(settings=settings, config=config, trusted_proxies=[],
                       admission=Admission(CachedKeyStore(NoKeys(), 30), limiter, Words(), config.models),
                       gateway=gateway, key_admin=None, cost_queries=None,  # type: ignore[arg-type]
                       breakers=router.breakers, readiness=[], teams=None)  # type: ignore[arg-type]
        await gateway.drain()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(api_app, "configure_logging", lambda *args, **kwargs: None)
        return TestClient(api_app.create_app(settings, fakes))


def chat(test_client: TestClient, model: str = MODEL) -> Any:
    return test_client.post("/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": "say hi"}], "max_tokens": 8})


def test_a_granted_call_is_answered_with_the_ratelimit_headers_and_recorded():
    limiter, recorded = FakeLimiter(Granted(decision(True))), Recorded()
    with client(limiter, recorded) as api:
        answer = chat(api)
    assert answer.status_code == 200 and answer.json() == ANSWER
    assert answer.headers["RateLimit-Policy"] == '"anonymous";q=3;w=3600'
    [asked] = limiter.asked
    [event] = recorded.events
    assert asked.model == event.model == MODEL and asked.max_tokens == 8 and asked.prompt_tokens_estimate > 0
    assert answer.headers["X-Request-Id"] == asked.request_id == event.request_id


def test_a_denied_call_gets_the_original_429_and_reaches_no_provider():
    limiter, recorded = FakeLimiter(Denied(decision(False))), Recorded()
    with client(limiter, recorded) as api:
        answer = chat(api)
    assert answer.status_code == 429
    assert answer.json()["error"] == "Rate limit exceeded" and answer.json()["limit"] == 3
    assert answer.headers["Retry-After"] == "1800" and "RateLimit" in answer.headers
    assert recorded.events == []


def test_no_limit_checked_is_a_503_in_closed_mode_and_a_call_without_ratelimit_headers_in_open_mode():
    closed = FakeLimiter(Unavailable("Rate limiter unavailable; try again shortly", 5))
    with client(closed, Recorded()) as api:
        answer = chat(api)
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"
    assert answer.json()["error"]["code"] == "limiter_unavailable"
    assert answer.json()["error"]["message"] == "Rate limiter unavailable; try again shortly"

    opened, recorded = FakeLimiter(Unchecked("Rate limiter unavailable; request allowed")), Recorded()
    with client(opened, recorded) as api:
        answer = chat(api)
    assert answer.status_code == 200 and "RateLimit" not in answer.headers and len(recorded.events) == 1


def test_an_unknown_model_is_a_404_before_the_limiter_is_asked():
    limiter = FakeLimiter(Granted(decision(True)))
    with client(limiter, Recorded()) as api:
        answer = chat(api, model="no-such-model")
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "model_not_found"
    assert limiter.asked == []


def test_a_call_no_provider_answered_is_a_502_naming_the_request_it_was_recorded_under():
    recorded = Recorded()
    with client(FakeLimiter(Granted(decision(True))), recorded, FakeProvider(fails=True)) as api:
        answer = chat(api)
        ready = api.get("/health/ready")
    assert answer.status_code == 502 and answer.json()["error"]["code"] == "provider_error"
    [event] = recorded.events
    assert answer.headers["X-Request-Id"] == event.request_id and not event.success
    assert ready.status_code == 200 and ready.json()["providers"] == {"together_ai": "closed"}


def test_the_limiter_client_alone_decides_what_an_answer_means():
    assert isinstance(outcome_of(decision(True)), Granted)
    assert isinstance(outcome_of(decision(False)), Denied)
    unchecked_open = decision(True, limited_by="unavailable", reason="Rate limiter storage unavailable; allowed")
    assert outcome_of(unchecked_open) == Unchecked("Rate limiter storage unavailable; allowed")
    unchecked_closed = decision(False, limited_by="unavailable", retry_after_s=5,
                                reason="Rate limiter storage unavailable; try again shortly")
    assert outcome_of(unchecked_closed) == Unavailable("Rate limiter storage unavailable; try again shortly", 5)
    assert isinstance(outcome_of(decision(False, limited_by="model")), ModelRefused)


def test_a_call_counted_for_a_team_is_recorded_for_that_team():
    limiter, recorded = FakeLimiter(Granted(decision(True, team_id="research"))), Recorded()
    with client(limiter, recorded) as api:
        assert chat(api).status_code == 200
    [event] = recorded.events
    assert event.team_id == "research"


def test_a_team_budgets_denial_adds_its_scope_and_budget_to_the_original_body_and_runs_until_the_reset():
    denied = decision(False, limited_by="budget", limit=50_000, remaining=12, window_s=2_592_000, retry_after_s=1800.2,
                      scope="team", scope_id="research", period="month", timezone="Europe/Berlin",
                      budget_usd="500", spent_usd="499.88", resets_at=RESET, team_id="research")
    with client(FakeLimiter(Denied(denied)), Recorded()) as api:
        answer = chat(api)
    body = answer.json()
    assert answer.status_code == 429 and list(body)[:7] == ["error", "message", "tier", "limit", "windowMs",
                                                            "retryAfter", "upgradeUrl"]
    assert {k: body[k] for k in ("scope", "scope_id", "period", "timezone", "budget_usd", "spent_usd")} == {
        "scope": "team", "scope_id": "research", "period": "month", "timezone": "Europe/Berlin",
        "budget_usd": "500", "spent_usd": "499.88"}
    assert body["resets_at"] == body["retryAfter"] and "rolling" not in body
    assert answer.headers["Retry-After"] == "1801"
    assert answer.headers["RateLimit-Policy"] == '"team-budget-month";q=50000;w=2592000'
    assert answer.headers["RateLimit"].startswith('"team-budget-month";r=12;t=')


def test_a_model_outside_an_allow_list_is_a_403_and_reaches_no_provider():
    refused = decision(False, limited_by="model", scope="key", scope_id="7",
                       reason="Key 7 may not call the model meta-llama/Llama-3-8b-chat-hf")
    recorded = Recorded()
    with client(FakeLimiter(ModelRefused(refused)), recorded) as api:
        answer = chat(api)
    assert answer.status_code == 403 and answer.json()["error"] == {
        "message": "Key 7 may not call the model meta-llama/Llama-3-8b-chat-hf", "type": "permission_error",
        "param": "model", "code": "model_not_allowed"}
    assert recorded.events == []
