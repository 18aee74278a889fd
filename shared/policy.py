"""Policy values an operator tunes: tiers and their limits, the model map, spend thresholds, alert routes,
with the defaults of docs/design.md. Pure value types (settings.py fills them from the environment and the
YAML file), so that the rules that use them import no configuration machinery."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, Field, model_validator


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


class ModelRoute(BaseModel):
    """Where one public model name is served: provider and the provider's own model id."""

    provider: Literal["together_ai", "openai"]
    model: str


class ModelConfig(BaseModel):
    """A public model: its routes, tried in order, and the most one of its calls may generate. In the
    YAML file a model may be given as its list of routes alone."""

    routes: list[ModelRoute] = Field(min_length=1)
    max_tokens: int | None = Field(
        default=None, gt=0,
        description="The model's completion ceiling: a call asking for more is refused, a call asking for no "
                    "limit is sent with this one (else DEFAULT_MAX_TOKENS).")

    @model_validator(mode="before")
    @classmethod
    def _routes_alone(cls, value: object) -> object:
        return {"routes": value} if isinstance(value, list) else value

    def served_by(self) -> list[tuple[str, str]]:
        """(provider, the provider's model) of every route."""
        return [(route.provider, route.model) for route in self.routes]


def _model(*routes: tuple[str, str]) -> ModelConfig:
    return ModelConfig(routes=[ModelRoute.model_validate({"provider": p, "model": m}) for p, m in routes])


DEFAULT_MODELS: dict[str, ModelConfig] = {
    "meta-llama/Llama-3-70b-chat-hf": _model(("together_ai", "meta-llama/Llama-3-70b-chat-hf"), ("openai", "gpt-4o")),
    "meta-llama/Llama-3-8b-chat-hf": _model(("together_ai", "meta-llama/Llama-3-8b-chat-hf"),
                                            ("openai", "gpt-4o-mini")),
    "meta-llama/Llama-3.3-70B-Instruct-Turbo": _model(("together_ai", "meta-llama/Llama-3.3-70B-Instruct-Turbo"),
                                                      ("openai", "gpt-4o")),
    "gpt-4o": _model(("openai", "gpt-4o")),
    "gpt-4o-mini": _model(("openai", "gpt-4o-mini")),
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
