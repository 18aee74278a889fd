"""Policy values an operator tunes: tiers and their limits, the providers and the model map, spend thresholds,
with the defaults of docs/design.md. Pure value types (settings.py fills them from the environment and the
YAML file), so that the rules that use them import no configuration machinery."""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TierLimits(BaseModel):
    requests: int = Field(gt=0)
    window_s: int = Field(default=3600, gt=0)
    strict_requests: int = Field(gt=0, description="Limit for expensive endpoints (strict policy).")
    tokens_per_minute: int = Field(gt=0)
    daily_budget_usd: Decimal = Field(gt=0)


DEFAULT_TIERS: dict[str, TierLimits] = {
    "anonymous": TierLimits(requests=3, strict_requests=1, tokens_per_minute=4_000,
                            daily_budget_usd=Decimal("0.10")),
    "free": TierLimits(requests=10, strict_requests=2, tokens_per_minute=20_000,
                       daily_budget_usd=Decimal("1.00")),
    "pro": TierLimits(requests=100, strict_requests=20, tokens_per_minute=200_000,
                      daily_budget_usd=Decimal("25.00")),
    "enterprise": TierLimits(requests=1000, strict_requests=200, tokens_per_minute=2_000_000,
                             daily_budget_usd=Decimal("250.00")),
}


ProviderKind = Literal["openai", "azure", "anthropic"]
RouteStrategy = Literal["fallback", "weighted", "least_busy"]
ModelServes = Literal["chat", "embeddings"]
# A provider's name is a label of metrics, part of Redis keys and the first half of a price key.
PROVIDER_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# The providers that exist without being declared: today's TOGETHER_* and OPENAI_* settings.
IMPLICIT_PROVIDERS = ("together_ai", "openai")
ANTHROPIC_VERSION = "2023-06-01"  # the anthropic-version header of every call to an anthropic provider
AZURE_API_VERSION = "2024-10-21"  # an azure provider's api-version when it declares none


class ProviderConfig(BaseModel):
    """One provider endpoint (a deployment): how to reach it, the name of the environment variable
    holding its key (never the key), and the ceilings it is held to."""

    model_config = ConfigDict(extra="forbid")

    kind: ProviderKind = Field(
        description="openai: any OpenAI-compatible server; azure: Azure OpenAI's deployment URLs; anthropic: the "
                    "Messages API.")
    base_url: str = Field(
        min_length=1, description="What the vendor's own SDK takes: https://api.openai.com/v1, "
                                  "https://NAME.openai.azure.com, https://api.anthropic.com.")
    api_key_env: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="The environment variable that holds the key; absent: calls carry no key (a local server).")
    api_version: str | None = Field(default=None, min_length=1, description="azure only: the api-version.")
    timeout_s: float | None = Field(default=None, gt=0, description="Absent: PROVIDER_TIMEOUT_S.")
    connect_timeout_s: float | None = Field(default=None, gt=0, description="Absent: PROVIDER_CONNECT_TIMEOUT_S.")
    max_retries: int | None = Field(default=None, ge=0, description="Absent: PROVIDER_MAX_RETRIES.")
    rpm: int | None = Field(default=None, gt=0, description="Requests a minute this deployment takes, across "
                                                           "every gateway replica.")
    tpm: int | None = Field(default=None, gt=0, description="Tokens a minute (prompt and completion limit), across "
                                                           "every gateway replica.")

    @model_validator(mode="after")
    def _version_for_azure(self) -> ProviderConfig:
        if self.api_version is not None and self.kind != "azure":
            raise ValueError("api_version applies to azure providers only")
        return self


class ModelRoute(BaseModel):
    """Where one public model name is served: a provider (by its name) and the provider's own model id
    (for azure, the deployment name)."""

    model_config = ConfigDict(extra="forbid")

    provider: str = Field(min_length=1, max_length=64)
    model: str = Field(min_length=1, max_length=256)
    weight: float = Field(default=1.0, gt=0, description="The route's share of calls under the weighted strategy.")


class ModelCache(BaseModel):
    """A public model's response cache: on or off (absent: the global `cache.enabled`), its entries'
    lifetime (absent: the global `cache.ttl_s`), and whether one caller's entries answer every caller."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = None
    ttl_s: int | None = Field(default=None, gt=0, le=30 * 86_400, description="Absent: cache.ttl_s.")
    shared: bool = Field(
        default=False, description="true: one entry per request for every caller (anonymous ones included); "
                                   "false: an entry answers only its team (or, outside a team, its user).")


class CacheConfig(BaseModel):
    """The gateway's response cache (off by default): exact-match answers of chat completions and
    embeddings in Redis, per model as `models.<name>.cache` says."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="The cache of every model whose own `cache.enabled` is unset.")
    ttl_s: int = Field(default=3600, gt=0, le=30 * 86_400, description="How long an entry lives, in seconds.")
    max_entry_bytes: int = Field(default=1_048_576, gt=0, le=64 * 1_048_576,
                                 description="An answer larger than this (as stored) is not stored.")


class ModelConfig(BaseModel):
    """A public model: its routes, how a call picks among them, the most one of its calls may generate,
    and the kind of call it serves. In the YAML file a model may be given as its list of routes alone."""

    model_config = ConfigDict(extra="forbid")

    routes: list[ModelRoute] = Field(min_length=1)
    strategy: RouteStrategy = Field(
        default="fallback",
        description="fallback: the routes in order; weighted: spread by weight, the others as fallbacks; least_busy: "
                    "the route with the fewest calls in flight on this replica first.")
    max_tokens: int | None = Field(
        default=None, gt=0,
        description="The model's completion ceiling: a call asking for more is refused, a call asking for no "
                    "limit is sent with this one (else DEFAULT_MAX_TOKENS).")
    serves: ModelServes = Field(default="chat", description="chat: /v1/chat/completions; embeddings: /v1/embeddings.")
    cache: ModelCache | None = Field(default=None, description="The model's response cache; absent: the global one.")

    @model_validator(mode="before")
    @classmethod
    def _routes_alone(cls, value: object) -> object:
        return {"routes": value} if isinstance(value, list) else value

    def served_by(self) -> list[tuple[str, str]]:
        """(provider, the provider's model) of every route."""
        return [(route.provider, route.model) for route in self.routes]


Location = tuple[str | int, ...]


def routing_problems(providers: Mapping[str, ProviderConfig], models: Mapping[str, ModelConfig]
                     ) -> list[tuple[Location, str]]:
    """What the model map gets wrong about the providers, each with where it is: a route to a provider
    nobody declared, an embeddings model routed to a kind that has no embeddings, a provider name that
    cannot be a label."""
    problems: list[tuple[Location, str]] = []
    known = {*IMPLICIT_PROVIDERS, *providers}
    for name in providers:
        if not re.match(PROVIDER_NAME, name):
            problems.append((("providers", name), f"provider name {name!r} must be letters, digits, '_', '.' or '-' "
                                                  "(at most 64, starting with a letter or digit)"))
    for public, model in models.items():
        for index, route in enumerate(model.routes):
            where = ("models", public, "routes", index, "provider")
            if route.provider not in known:
                problems.append((where, f"unknown provider {route.provider!r} (known: {', '.join(sorted(known))})"))
            elif model.serves == "embeddings" and route.provider in providers \
                    and providers[route.provider].kind == "anthropic":
                problems.append((where, f"provider {route.provider!r} is of kind anthropic, which serves no "
                                        "embeddings"))
    return problems


def _model(*routes: tuple[str, str], serves: ModelServes = "chat") -> ModelConfig:
    return ModelConfig(routes=[ModelRoute(provider=p, model=m) for p, m in routes], serves=serves)


DEFAULT_MODELS: dict[str, ModelConfig] = {
    "meta-llama/Llama-3-70b-chat-hf": _model(("together_ai", "meta-llama/Llama-3-70b-chat-hf"), ("openai", "gpt-4o")),
    "meta-llama/Llama-3-8b-chat-hf": _model(("together_ai", "meta-llama/Llama-3-8b-chat-hf"),
                                            ("openai", "gpt-4o-mini")),
    "meta-llama/Llama-3.3-70B-Instruct-Turbo": _model(("together_ai", "meta-llama/Llama-3.3-70B-Instruct-Turbo"),
                                                      ("openai", "gpt-4o")),
    "gpt-4o": _model(("openai", "gpt-4o")),
    "gpt-4o-mini": _model(("openai", "gpt-4o-mini")),
    "BAAI/bge-large-en-v1.5": _model(("together_ai", "BAAI/bge-large-en-v1.5"), serves="embeddings"),
    "text-embedding-3-small": _model(("openai", "text-embedding-3-small"), serves="embeddings"),
}


def completion_limit(model: ModelConfig | None, default_max_tokens: int) -> int:
    """What a call that names no limit may generate per choice: the model's ceiling, else the operator's
    DEFAULT_MAX_TOKENS. The gateway sends a call upstream with it, and the limiter reserves on it."""
    return model.max_tokens if model is not None and model.max_tokens is not None else default_max_tokens


class Levels(BaseModel):
    warning: Decimal | None = Field(default=None, gt=0)
    critical: Decimal | None = Field(default=None, gt=0)


class Thresholds(BaseModel):
    """Spend thresholds in USD (docs/design.md): each crossing raises one alert per window."""

    hourly: Levels = Levels(warning=Decimal(10), critical=Decimal(50))
    daily: Levels = Levels(warning=Decimal(100), critical=Decimal(500))
    monthly: Levels = Levels(warning=Decimal(1000), critical=Decimal(5000))
    user_daily: Levels = Levels(warning=Decimal(10))

    def for_period(self, period: str) -> Levels:
        return {"hour": self.hourly, "day": self.daily, "month": self.monthly}[period]
