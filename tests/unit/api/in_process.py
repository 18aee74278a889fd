"""The api gateway served in process (tests/support/in_process.py) on in-memory fakes of its ports: the
key table (KeyAdmin and ApiKeyStore), the limiter, the providers, the completion publisher and the
cost service. For the HTTP edge, admission and the admin API; what the real adapters do is tested
against real servers (the adapter and service tiers)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

from fastapi import FastAPI

from services.api.admission import Admission, Granted, LimitOutcome
from services.api.app import create_app
from services.api.cached_key_store import CachedKeyStore, StoredKey
from services.api.callers import Caller, KeyStoreUnavailable, parse_networks
from services.api.gateway import Gateway
from services.api.http.state import ApiState
from services.api.response_cache import ResponseCache
from services.api.settings import ApiSettings
from shared.api_keys import KeyRecord, display_prefix, hash_api_key, new_api_key
from shared.cost_query import Analytics, CostQuery, CostServiceUnavailable, CurrentCost
from shared.events import LimitDecision, LimitRequest, utc_now
from tests.unit.api.fakes import Recorded, Words, router_of

Decide = Callable[[LimitRequest], LimitOutcome]


def granted(request: LimitRequest) -> LimitOutcome:
    return Granted(LimitDecision(allowed=True, tier=request.tier, policy=request.policy, limit=10, remaining=9,
                                 window_s=3600, reset_at=utc_now() + timedelta(hours=1)))


class ScriptedLimiter:
    """LimiterClient: answers with `decide`, and keeps every request it was asked."""

    def __init__(self, decide: Decide = granted) -> None:
        self.decide = decide
        self.asked: list[LimitRequest] = []

    async def ask(self, request: LimitRequest) -> LimitOutcome:
        self.asked.append(request)
        return self.decide(request)


class AnsweringProvider:
    """ProviderClient: every call answered at once, with the provider's usage."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[Mapping[str, Any]] = []

    async def complete(self, model: str, payload: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
        self.calls.append({**payload, "model": model})
        answer = {"id": "cmpl-1", "object": "chat.completion", "model": model,
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"},
                               "finish_reason": "stop"}],
                  "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}
        return answer, json.dumps(answer).encode()

    async def embed(self, model: str, payload: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
        raise NotImplementedError("no embeddings in process: tests/integration embed through real servers")

    async def open_stream(self, model: str, payload: Mapping[str, Any]) -> Any:
        raise NotImplementedError("no streams in process: tests/integration streams through real servers")

    async def aclose(self) -> None: ...


class KeyTable:
    """The api_keys table in memory, behind both ports that use it: KeyAdmin (the admin API) and
    ApiKeyStore (every call's caller, found by digest); `audit` holds every change, as api_key_audit
    does. Set `unavailable` to answer as a key store that cannot be reached."""

    def __init__(self) -> None:
        self.records: dict[int, KeyRecord] = {}
        self.hashes: dict[str, int] = {}
        self.audit: list[tuple[int, str, str]] = []
        self.unavailable = False

    def add(self, user_id: str, tier: str, admin: bool = False) -> str:
        """A key made outside the admin API (as `costwarden keys create` does); returns the key."""
        key = new_api_key()
        self._insert(key, user_id, tier, admin, None, None)
        return key

    def _insert(self, key: str, user_id: str, tier: str, admin: bool, alias: str | None,
                expires_in: timedelta | None) -> KeyRecord:
        now = utc_now()
        record = KeyRecord(len(self.records) + 1, display_prefix(key), user_id, tier, admin, alias, now, None,
                           now + expires_in if expires_in else None, None)
        self.records[record.id] = record
        self.hashes[hash_api_key(key)] = record.id
        return record

    async def create(self, user_id: str, tier: str, actor: str, is_admin: bool, alias: str | None,
                     expires_in: timedelta | None, team_id: str | None = None) -> tuple[KeyRecord, str]:
        if team_id is not None:
            raise ValueError(f"user {user_id} is in no team: add them to team {team_id} first")
        key = new_api_key()
        record = self._insert(key, user_id, tier, is_admin, alias, expires_in)
        self.audit.append((record.id, "create", actor))
        return record, key

    async def list(self, user_id: str | None, tier: str | None, revoked: bool | None,
                   team_id: str | None = None) -> list[KeyRecord]:
        return [r for r in self.records.values() if user_id in (None, r.user_id) and tier in (None, r.tier)
                and revoked in (None, r.revoked_at is not None) and team_id in (None, r.team_id)]

    async def get(self, key_id: int) -> KeyRecord | None:
        return self.records.get(key_id)

    async def revoke(self, key_id: int, actor: str) -> KeyRecord | None:
        record = self.records.get(key_id)
        if record is None:
            return None
        if record.revoked_at is None:
            record = self.records[key_id] = replace(record, revoked_at=utc_now())
            self.audit.append((key_id, "revoke", actor))
        return record

    async def find(self, digest: str) -> StoredKey | None:
        if self.unavailable:
            raise KeyStoreUnavailable("ConnectionRefusedError")
        record = self.records.get(self.hashes.get(digest, 0))
        if record is None or record.revoked_at is not None:
            return None
        return StoredKey(Caller(record.user_id, record.tier, record.admin, record.id, record.team_id),
                         record.expires_at)


@dataclass
class Spend:
    """CostQueries: today's and this month's spend per key and per user; set `unavailable` to answer as a
    cost service that does not reply."""

    per_key: dict[int, Decimal] = field(default_factory=dict)
    per_user: dict[str, Decimal] = field(default_factory=dict)
    unavailable: bool = False

    async def answer(self, query: CostQuery) -> CurrentCost | Analytics:
        if self.unavailable:
            raise CostServiceUnavailable("the cost service did not answer")
        assert query.kind == "current", "only current spend is asked in process"
        amount = (self.per_key.get(query.api_key_id, Decimal(0)) if query.api_key_id is not None
                  else self.per_user.get(query.user_id or "", Decimal(0)))
        return CurrentCost(user_id=query.user_id, api_key_id=query.api_key_id, hourly=amount, daily=amount,
                           monthly=amount, as_of=utc_now())


@dataclass
class FakePorts:
    keys: KeyTable = field(default_factory=KeyTable)
    limiter: ScriptedLimiter = field(default_factory=ScriptedLimiter)
    spend: Spend = field(default_factory=Spend)
    published: Recorded = field(default_factory=Recorded)
    providers: dict[str, AnsweringProvider] = field(
        default_factory=lambda: {name: AnsweringProvider(name) for name in ("together_ai", "openai")})


def settings(**overrides: Any) -> ApiSettings:
    """The gateway's settings as the tests' gateway process has them: the loopback peer is a trusted
    proxy, keys are looked up on every call, no configuration file."""
    defaults = {"trusted_proxies": ["127.0.0.1/32"], "api_key_cache_s": 0, "costwarden_config": None}
    return ApiSettings(_env_file=None, **{**defaults, **overrides})  # type: ignore[call-arg]


def in_process_api(ports: FakePorts, config: ApiSettings | None = None, cache: ResponseCache | None = None) -> FastAPI:
    """The real app (routes, error handlers, middleware) on `ports`, with `cache` as its response cache."""

    @asynccontextmanager
    async def resources(settings: ApiSettings) -> AsyncIterator[ApiState]:
        file_config = settings.file_config()
        router = router_of(*ports.providers.values())
        admission = Admission(CachedKeyStore(ports.keys, settings.api_key_cache_s), ports.limiter, Words(),
                              file_config.models)
        gateway = Gateway(router, ports.published, Words())
        yield ApiState(settings=settings, config=file_config, trusted_proxies=parse_networks(settings.trusted_proxies),
                       admission=admission, gateway=gateway, key_admin=ports.keys, cost_queries=ports.spend,
                       breakers=router.breakers, readiness=[], teams=None,  # type: ignore[arg-type]  # no team route
                       cache=cache)
        await gateway.drain()

    return create_app(config or settings(), resources=resources)
