"""One LLM call through the gateway: what it is (its context, the public model resolved once, with its
routes), who bills it, and its record, `llm.completed`, published through a port."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from prometheus_client import Counter

from services.api.callers import Caller
from services.api.providers import ProviderCall, ProviderError, ProvidersFailed
from services.api.usage import NO_USAGE, Usage, billed_attempts, billed_prompt
from shared.events import BilledAttempt, LlmCompleted, Policy
from shared.policy import ModelRoute, RouteStrategy

ESTIMATED = Counter("costwarden_api_estimated_usage_total",
                    "Calls whose usage the gateway counted because the provider sent none", ["model"])


@dataclass(slots=True)
class CallContext:
    """`model` is the public model the caller asked for, `routes` where it is served and `strategy` the
    order they are tried in. Not changed once made (dataclasses.replace makes a variant); not frozen,
    because a frozen dataclass sets each of its fields through object.__setattr__, on every call."""

    request_id: str
    caller: Caller
    client_ip: str
    endpoint: str
    model: str
    routes: Sequence[ModelRoute]
    prompt_tokens: int
    max_tokens: int | None
    choices: int = 1
    policy: Policy = "standard"
    session_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    team_id: str | None = None  # the team the limiter counted the call for
    strategy: RouteStrategy = "fallback"
    cache_hit: bool = False  # answered from the response cache: no provider is called

    @property
    def worst_case_tokens(self) -> int:
        """The prompt and everything its choices may generate: what a deployment's tpm ceiling counts."""
        return self.prompt_tokens + self.choices * (self.max_tokens or 0)


class CallFailed(ProvidersFailed):
    """No provider answered the call `request_id`; it is recorded under that id."""

    def __init__(self, request_id: str, failure: ProvidersFailed) -> None:
        super().__init__(failure.attempts, failure.skipped)
        self.request_id = request_id


class CompletionPublisher(Protocol):
    async def publish(self, event: LlmCompleted) -> None:
        """Record one call; never raises (what cannot be sent now is kept and sent later)."""
        ...

    async def drain(self, timeout_s: float) -> None: ...


class BilledTo(NamedTuple):
    """Who bills a call: the provider and model of the attempt that answered (for a call no provider
    answered: the last attempt its provider billed, else the last one tried), and the other attempts
    their providers billed."""

    provider: str
    served_model: str | None
    others: list[BilledAttempt]

    @classmethod
    def answer(cls, call: ProviderCall, prompt_estimate: int) -> BilledTo:
        failed = call.failed_attempts
        billed = billed_attempts(((a.provider, a.served_model) for a in failed if a.billable), prompt_estimate) \
            if failed else []
        return cls(call.provider, call.upstream_model, billed)

    @classmethod
    def failure(cls, attempts: Sequence[ProviderError], prompt_estimate: int) -> tuple[BilledTo, Usage]:
        """Who bills a call that failed, and the usage of the attempt named."""
        billed = [a for a in attempts if a.billable]
        named = billed[-1] if billed else attempts[-1] if attempts else None
        if named is None:
            return cls("none", None, []), NO_USAGE
        others = billed_attempts(((a.provider, a.served_model) for a in billed[:-1]), prompt_estimate)
        return cls(named.provider, named.served_model, others), billed_prompt(prompt_estimate) if billed else NO_USAGE


def completed_event(ctx: CallContext, billed_to: BilledTo, started: float, usage: Usage,
                    error: str | None) -> LlmCompleted:
    """The call's record; `started` is when it was sent (time.perf_counter)."""
    if usage.source == "estimated":
        ESTIMATED.labels(ctx.model).inc()
    # Almost every call has no other billed attempt: left to its default, the empty list skips its
    # validation and the contract's check of a call's total tokens.
    others: dict[str, Any] = {"billed_attempts": billed_to.others} if billed_to.others else {}
    return LlmCompleted(
        id=ctx.request_id, request_id=ctx.request_id, user_id=ctx.caller.user_id, session_id=ctx.session_id,
        client_ip=ctx.client_ip, tier=ctx.caller.tier, provider=billed_to.provider, model=ctx.model,
        served_model=billed_to.served_model, **others,
        prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
        cached_prompt_tokens=usage.cached_prompt_tokens, cache_write_prompt_tokens=usage.cache_write_prompt_tokens,
        usage_source=usage.source,
        endpoint=ctx.endpoint, success=error is None, error=error,
        latency_ms=int((time.perf_counter() - started) * 1000), tags=dict(ctx.tags), api_key_id=ctx.caller.key_id,
        team_id=ctx.team_id, cache_hit=ctx.cache_hit,
    )
