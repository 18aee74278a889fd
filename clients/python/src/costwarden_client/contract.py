"""The client's copy of the bus contract: the two messages an upstream service sends and the decision it
gets back, field for field as costwarden's own models (shared/events.py in the costwarden repository)
define them; costwarden's tests fail when the two copies differ. docs/asyncapi.yaml describes the whole
bus."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator

SCHEMA_VERSION = 1
LLM_REQUEST = "llm.request"
LLM_COMPLETED = "llm.completed"
UPSTREAM_INBOX_PREFIX = "_INBOX_upstream"

MAX_TOKENS_PER_CALL = 1_000_000_000
MAX_LATENCY_MS = 2_147_483_647
MAX_TAGS = 32
MAX_ERROR_CHARS = 2000
MAX_BILLED_ATTEMPTS = 16
MAX_CHOICES = 128
TagName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
TagValue = Annotated[str, StringConstraints(max_length=256)]

Policy = Literal["standard", "strict"]
LimitedBy = Literal["requests", "strict", "tokens", "budget", "model", "unavailable"]
UsageSource = Literal["provider", "estimated"]


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


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
    """The limiter's reply to `llm.request`. Fields this copy does not know yet (a newer limiter's) are
    kept as attributes: `decision.model_extra` lists them."""

    model_config = ConfigDict(extra="allow", frozen=True)

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


class BilledAttempt(BaseModel):
    """An attempt that did not answer but that its provider bills: it had the prompt (a timeout while the
    model worked, a connection cut mid-answer)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    provider: str = Field(min_length=1, max_length=64)
    served_model: str = Field(min_length=1, max_length=256)
    prompt_tokens: int = Field(ge=0, le=MAX_TOKENS_PER_CALL)


class LlmCompleted(Event):
    """Published on `llm.completed` after every provider call, success or failure, with its request id as
    `id` and as the `Nats-Msg-Id` header."""

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
    error: str | None = Field(default=None, max_length=MAX_ERROR_CHARS)
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
        if attempts and (sum(attempt.prompt_tokens for attempt in attempts) + info.data.get("prompt_tokens", 0)
                         + info.data.get("completion_tokens", 0)) > MAX_TOKENS_PER_CALL:
            raise ValueError(f"a call's tokens, billed attempts included, must not exceed {MAX_TOKENS_PER_CALL}")
        return attempts
