"""What the limiter reads: its environment variables and its part of the YAML file (the tiers it
enforces, the models and prices it reserves and settles at)."""

from __future__ import annotations

from shared.settings import CallLimitSettings, ModelsPart, PricesPart, RedisSettings, TiersPart


class LimiterConfig(TiersPart, ModelsPart, PricesPart):
    pass


class LimiterSettings(RedisSettings, CallLimitSettings):
    limiter_port: int = 3002
    limiter_redis_timeout_s: float = 0.25
    reservation_ttl_s: int = 900

    def file_config(self) -> LimiterConfig:
        return self.file_part(LimiterConfig)
