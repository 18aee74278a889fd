"""The event contract between services: one pydantic model per event, JSON on the wire.

Every event carries `schema_version`, a unique `id` and `occurred_at` in UTC. Consumers are
idempotent on `id` (for `llm.completed` the request id is the id).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator

SCHEMA_VERSION = 1


def utc_now() -> datetime:
    return datetime.now(UTC)


_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_id() -> str:
    """A random (version 4) UUID as 32 hex digits, as uuid.uuid4().hex gives, without building a UUID
    object: the gateway makes two for every call."""
    return "%032x" % ((int.from_bytes(os.urandom(16)) & _UUID4_CLEAR) | _UUID4_SET)


# Bounds that keep one event from poisoning a batch: the ledger stores token counts and latency as
# 32-bit integers (a call's prompt and completion tokens together included), and every tag becomes a
# rollup row. An event past them is dead-lettered with the reason instead of failing its whole batch.
MAX_TOKENS_PER_CALL = 1_000_000_000
MAX_LATENCY_MS = 2_147_483_647
MAX_TAGS = 32
MAX_BILLED_ATTEMPTS = 16
MAX_CHOICES = 128
TagName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
TagValue = Annotated[str, StringConstraints(max_length=256)]


class Event(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: int = SCHEMA_VERSION
    id: str = Field(default_factory=new_id, min_length=1, max_length=128)
    occurred_at: datetime = Field(default_factory=utc_now)

    @field_validator("occurred_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("occurred_at must carry a timezone (UTC)")
        return value.astimezone(UTC)


Policy = Literal["standard", "strict"]
LimitedBy = Literal["requests", "strict", "tokens", "budget", "model", "unavailable"]
LimitScope = Literal["key", "user", "team"]
UsageSource = Literal["provider", "estimated"]


class LimitRequest(Event):
    """Asked on `llm.request` before a provider is called (request-reply)."""

    request_id: str = Field(min_length=1, max_length=128)
    user_id: str | None = Field(default=None, max_length=256)
    client_ip: str | None = Field(default=None, max_length=64)
    tier: str = Field(min_length=1, max_length=64)
    endpoint: str = Field(default="/v1/chat/completions", max_length=256)
    policy: Policy = "standard"
    model: str = Field(min_length=1, max_length=256)
    prompt_tokens_estimate: int = Field(default=0, ge=0)
    max_tokens: int | None = Field(
        default=None, ge=1,
        description="The most the call may generate per choice; absent: the model's or the operator's default.")
    choices: int = Field(default=1, ge=1, le=MAX_CHOICES, description="How many choices the call asks for (`n`).")
    api_key_id: int | None = Field(
        default=None, ge=1, le=2**63 - 1,
        description="The API key the call is made with: its key limits apply (the gateway sets it).")
    cache_hit: bool = Field(
        default=False,
        description="The gateway answers the call from its response cache: it counts as a request, but reserves "
                    "no tokens or dollars and is held to no budget.")


class LimitDecision(Event):
    """The limiter's reply to `llm.request`."""

    allowed: bool
    tier: str
    policy: Policy = "standard"
    limit: int
    remaining: int
    window_s: int
    reset_at: datetime
    retry_after_s: float = 0
    reason: str | None = None
    limited_by: LimitedBy | None = None
    reserved_tokens: int = 0
    reserved_usd: Decimal = Decimal("0")
    team_id: str | None = Field(
        default=None, description="The team the call was counted for (its user's); copy it into llm.completed.")
    scope: LimitScope | None = Field(
        default=None, description="When a key's, user's or team's own limit denied the call: which scope "
                                  "(absent when the tier's limit did).")
    scope_id: str | None = None
    period: str | None = Field(default=None, description="The denying budget's calendar period: day, week, month.")
    timezone: str | None = None
    rolling: str | None = Field(default=None, description="The denying budget's rolling window (24h).")
    budget_usd: Decimal | None = None
    spent_usd: Decimal | None = Field(default=None, description="Spent and reserved in the budget's period.")
    resets_at: datetime | None = None

    @property
    def unchecked(self) -> bool:
        """No limit was checked (the limiter could not reach its store): `allowed` is its failure mode's."""
        return self.limited_by == "unavailable"

    @classmethod
    def unavailable(cls, request: LimitRequest, allowed: bool, reason: str) -> LimitDecision:
        """The answer when no limit could be checked (storage or limiter unreachable)."""
        now = utc_now()
        return cls(allowed=allowed, tier=request.tier, policy=request.policy, limit=0, remaining=0, window_s=0,
                   reset_at=now, retry_after_s=0 if allowed else 5, reason=reason, limited_by="unavailable")


class BilledAttempt(BaseModel):
    """An attempt that did not answer but that its provider bills: it had the prompt (a timeout while the
    model worked, a connection cut mid-answer)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    provider: str = Field(min_length=1, max_length=64)
    served_model: str = Field(min_length=1, max_length=256)
    prompt_tokens: int = Field(ge=0, le=MAX_TOKENS_PER_CALL)


class LlmCompleted(Event):
    """Published on `llm.completed` after every provider call, success or failure.

    `model` is what the caller asked for; `provider` and `served_model` say what answered (for a call no
    provider answered: the last attempt its provider billed, else the last one tried), and the token
    counts are that attempt's. Any other attempt a provider billed is in `billed_attempts`. The call is
    priced for what answered, each billed attempt for its own model (shared.pricing)."""

    request_id: str = Field(min_length=1, max_length=128)
    user_id: str | None = Field(default=None, max_length=256)
    session_id: str | None = Field(default=None, max_length=256)
    client_ip: str | None = Field(default=None, max_length=64)
    tier: str | None = Field(default=None, max_length=64)
    provider: str = Field(min_length=1, max_length=64)
    model: str = Field(min_length=1, max_length=256, description="The public model the caller asked for.")
    served_model: str | None = Field(
        default=None, min_length=1, max_length=256,
        description="The provider's own id of the model that answered; absent: the same as `model`.")
    prompt_tokens: int = Field(ge=0, le=MAX_TOKENS_PER_CALL)
    completion_tokens: int = Field(ge=0, le=MAX_TOKENS_PER_CALL)
    cached_prompt_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS_PER_CALL)
    cache_write_prompt_tokens: int = Field(
        default=0, ge=0, le=MAX_TOKENS_PER_CALL,
        description="Prompt tokens the provider wrote to its prompt cache (Anthropic's cache creation tokens), "
                    "part of `prompt_tokens`; priced at the model's cache-write price where it has one.")
    billed_attempts: list[BilledAttempt] = Field(
        default_factory=list, max_length=MAX_BILLED_ATTEMPTS,
        description="Other attempts of this call that a provider billed without answering.")
    endpoint: str = Field(max_length=256)
    success: bool
    error: str | None = Field(default=None, max_length=2000)
    latency_ms: int = Field(ge=0, le=MAX_LATENCY_MS)
    tags: dict[TagName, TagValue] = Field(default_factory=dict, max_length=MAX_TAGS)
    api_key_id: int | None = Field(
        default=None, ge=1, le=2**63 - 1,
        description="The id of the API key the call was made with (the gateway sets it); spend is rolled up per key.")
    team_id: str | None = Field(
        default=None, max_length=64,
        description="The team the limiter counted the call for (LimitDecision.team_id); spend is rolled up per team.")
    usage_source: UsageSource = Field(
        default="provider",
        description="provider: the provider's own usage; estimated: counted by the sender because the provider "
                    "sent none (stream abandoned or broken, usage omitted).")
    cache_hit: bool = Field(
        default=False,
        description="Answered from the gateway's response cache: no provider was called. The usage is the cached "
                    "answer's; the call costs nothing and what it would have cost is recorded as saved.")

    @field_validator("billed_attempts")
    @classmethod
    def _bounded_total(cls, attempts: list[BilledAttempt], info: ValidationInfo) -> list[BilledAttempt]:
        """The ledger keeps a call's tokens, billed attempts included, in one 32-bit column."""
        if attempts and (sum(attempt.prompt_tokens for attempt in attempts) + info.data.get("prompt_tokens", 0)
                         + info.data.get("completion_tokens", 0)) > MAX_TOKENS_PER_CALL:
            raise ValueError(f"a call's tokens, billed attempts included, must not exceed {MAX_TOKENS_PER_CALL}")
        return attempts

    @property
    def answered_by(self) -> str:
        """The provider's model that answered (or was billed last)."""
        return self.served_model or self.model

    @property
    def total_prompt_tokens(self) -> int:
        """Prompt tokens billed for the call, every billed attempt included."""
        return self.prompt_tokens + sum(attempt.prompt_tokens for attempt in self.billed_attempts)

    @property
    def total_tokens(self) -> int:
        return self.total_prompt_tokens + self.completion_tokens


class LimitViolation(Event):
    """Published on `limit.violation` for every denial."""

    request_id: str
    user_id: str | None = None
    client_ip: str | None = None
    tier: str
    endpoint: str
    policy: Policy
    limited_by: str
    limit: int
    window_s: int


class Alert(Event):
    """Published on `alert.<source>.<severity>`."""

    key: str = Field(min_length=1, max_length=512, description="Stable for one condition in one window.")
    source: Literal["cost", "health", "backup"]
    severity: Literal["warning", "critical", "resolved"]
    title: str
    text: str
    period: str | None = None
    threshold: Decimal | None = None
    actual: Decimal | None = None
    overage: Decimal | None = None
    window: str | None = None
    resolves: str | None = Field(default=None, description="For a resolved alert: the key of the alert it ends.")
    scope: str | None = Field(default=None, description="Whose budget: key:<id>, user:<id> or team:<id>.")
    resets_at: datetime | None = Field(default=None, description="When the budget's period ends.")


class LimitsChanged(Event):
    """Published (core NATS) on `limits.changed` after an administrator changes a team or a scope's limits:
    every limiter and cost replica reloads them."""

    subject: str = Field(max_length=512, description="What changed: team:<id>, key:<id>, user:<id>.")


class HealthChanged(Event):
    """Published on `health.changed` whenever a dependency's status changes."""

    dependency: str
    previous: str | None
    current: str
    message: str
    latency_ms: int | None = None


class BackupRequested(Event):
    """Published on `backup.requested` (by `costwarden backup run`)."""

    restore_test: bool = False


class BackupTick(Event):
    """Published on `schedule.backup` once per cron slot; the slot is also the Nats-Msg-Id."""

    slot: str


class BackupCompleted(Event):
    """Published on `backup.completed` after a verified backup."""

    name: str
    key: str
    sha256: str
    size_bytes: int
    duration_s: float
    tables: dict[str, int] | None = None


class DeadLetter(BaseModel):
    """Published on `dlq.<subject>` for anything a service could not parse or validate."""

    subject: str
    reason: str
    payload: str
    service: str
    occurred_at: datetime = Field(default_factory=utc_now)
