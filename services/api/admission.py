"""Whether a call may go ahead, apart from HTTP: who is calling (API keys, cached_key_store.py), which
public model it asks for (resolved once, into the call's context), how many prompt tokens it sends,
and the limiter's answer, asked through a port (nats_limiter_client.py is its adapter).

What a limiter answer means for the caller is a typed outcome, decided by the limiter client alone:
`Granted`, `Denied`, and, when no limit could be checked (no limiter answered, or the limiter could
not reach its store), `Unchecked` or `Unavailable` as LIMITER_FAILURE_MODE says."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from services.api.cached_key_store import CachedKeyStore
from services.api.callers import ANONYMOUS, Caller
from services.api.calls import CallContext
from services.api.usage import TokenCounter, embedding_tokens, prompt_chars, prompt_tokens
from shared.events import LimitDecision, LimitRequest
from shared.policy import ModelConfig, ModelServes

# Above this many characters a prompt is counted in a thread, so that one huge prompt does not stall
# every other call on the event loop.
COUNT_IN_THREAD_CHARS = 20_000


class UnknownModel(Exception):
    """The gateway does not serve this public model."""


class WrongEndpoint(Exception):
    """The public model serves another kind of call (an embeddings model asked to chat, or the reverse)."""


@dataclass(frozen=True, slots=True)
class Granted:
    """The limiter admitted the call and reserved its worst case."""

    decision: LimitDecision


@dataclass(frozen=True, slots=True)
class Denied:
    """A limit would be passed: the decision names which, and when to come back."""

    decision: LimitDecision


@dataclass(frozen=True, slots=True)
class ModelRefused:
    """A key's, user's or team's allow-list does not name the model: refused before anything is reserved."""

    decision: LimitDecision


@dataclass(frozen=True, slots=True)
class Unchecked:
    """No limit could be checked, and the failure mode (open) lets the call through."""

    reason: str


@dataclass(frozen=True, slots=True)
class Unavailable:
    """No limit could be checked, and the failure mode (closed) refuses the call for now."""

    reason: str
    retry_after_s: float


LimitOutcome = Granted | Denied | ModelRefused | Unchecked | Unavailable


class LimiterClient(Protocol):
    async def ask(self, request: LimitRequest) -> LimitOutcome: ...


class Admission:
    def __init__(self, keys: CachedKeyStore, limiter: LimiterClient, counter: TokenCounter,
                 models: Mapping[str, ModelConfig]) -> None:
        self.keys = keys
        self.limiter = limiter
        self.counter = counter
        self.models = models

    async def caller(self, key: str | None) -> Caller:
        """Who calls with this API key (anonymous without one); InvalidCredentials for a wrong, revoked or
        expired key, KeyStoreUnavailable when a key never seen cannot be checked now."""
        return ANONYMOUS if key is None else await self.keys.caller_for(key)

    def model(self, name: str, serves: ModelServes = "chat") -> ModelConfig:
        """A public model's routes and ceiling; UnknownModel when the gateway does not serve it,
        WrongEndpoint when it serves another kind of call."""
        config = self.models.get(name)
        if config is None:
            raise UnknownModel(name)
        if config.serves != serves:
            raise WrongEndpoint(config.serves)
        return config

    async def prompt_tokens(self, payload: Mapping[str, Any], serves: ModelServes = "chat") -> int:
        """The prompt's tokens (an embeddings call's: its input's): what the limiter reserves on, and what
        is billed if the provider sends no usage."""
        count = embedding_tokens if serves == "embeddings" else prompt_tokens
        if prompt_chars(payload) > COUNT_IN_THREAD_CHARS:
            return await asyncio.to_thread(count, self.counter, payload)
        return count(self.counter, payload)

    async def decide(self, ctx: CallContext) -> LimitOutcome:
        return await self.limiter.ask(LimitRequest(
            request_id=ctx.request_id, user_id=ctx.caller.user_id, client_ip=ctx.client_ip,
            tier=ctx.caller.tier, endpoint=ctx.endpoint, policy=ctx.policy, model=ctx.model,
            prompt_tokens_estimate=ctx.prompt_tokens, max_tokens=ctx.max_tokens, choices=ctx.choices,
            api_key_id=ctx.caller.key_id, cache_hit=ctx.cache_hit,
        ))
