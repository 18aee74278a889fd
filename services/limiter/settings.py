"""What the limiter reads: its environment variables and its part of the YAML file (the tiers it
enforces, the models and prices it reserves and settles at)."""

from __future__ import annotations

from shared.config_file import Problem
from shared.settings import CallLimitSettings, ModelsPart, PricesPart, RedisSettings, TiersPart, unpriced_routes


class LimiterConfig(TiersPart, ModelsPart, PricesPart):
    def problems(self) -> list[Problem]:
        return [*super().problems(), *unpriced_routes(self.models, self.price_catalog())]


class LimiterSettings(RedisSettings, CallLimitSettings):
    limiter_port: int = 3002
    limiter_redis_timeout_s: float = 0.25
    reservation_ttl_s: int = 900

    def file_config(self) -> LimiterConfig:
        return self.file_part(LimiterConfig)
