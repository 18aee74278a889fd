"""What the api reads: its environment variables and its part of the YAML file (the models it serves,
the model a call without one gets, the tiers an API key may have)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from shared.settings import CallLimitSettings, ModelsPart, ProviderSettings, TiersPart


class ApiConfig(ModelsPart, TiersPart):
    default_model: str = "meta-llama/Llama-3-70b-chat-hf"


class ApiSettings(ProviderSettings, CallLimitSettings):
    api_port: int = 3000
    api_workers: int = Field(default=1, ge=1, description="uvicorn worker processes of the api service.")

    provider_timeout_s: float = 60.0
    provider_connect_timeout_s: float = 3.0
    provider_max_retries: int = 2
    breaker_failure_threshold: int = 5
    breaker_cooldown_s: float = 30.0

    limiter_request_timeout_s: float = 0.5
    cost_query_timeout_s: float = 10.0
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_body_bytes: int = 1_000_000
    api_key_cache_s: float = 30.0
    upgrade_url: str = "/pricing"

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def file_config(self) -> ApiConfig:
        return self.file_part(ApiConfig)
