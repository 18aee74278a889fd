"""What the api reads: its environment variables and its part of the YAML file (the providers and the
models it serves, the model a call without one gets, the tiers an API key may have)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from shared.config_file import Problem
from shared.policy import AZURE_API_VERSION, CacheConfig, ProviderConfig, ProviderKind
from shared.settings import (
    CallLimitSettings,
    ModelsPart,
    ProviderSettings,
    RedisSettings,
    TiersPart,
    missing_keys,
)


class ApiConfig(ModelsPart, TiersPart):
    default_model: str = "meta-llama/Llama-3-70b-chat-hf"
    cache: CacheConfig = Field(default_factory=CacheConfig)

    def problems(self) -> list[Problem]:
        return [*super().problems(), *missing_keys(self.providers)]


@dataclass(frozen=True)
class ProviderEndpoint:
    """One provider as the gateway calls it: its configuration with the defaults filled in and its key."""

    name: str
    kind: ProviderKind
    base_url: str
    api_key: SecretStr | None
    timeout_s: float
    connect_timeout_s: float
    max_retries: int
    api_version: str | None = None
    rpm: int | None = None
    tpm: int | None = None

    @property
    def has_ceiling(self) -> bool:
        return self.rpm is not None or self.tpm is not None


class ApiSettings(ProviderSettings, CallLimitSettings, RedisSettings):
    api_port: int = 3000
    api_workers: int = Field(default=1, ge=1, description="uvicorn worker processes of the api service.")

    provider_timeout_s: float = 60.0
    provider_connect_timeout_s: float = 3.0
    provider_max_retries: int = 2
    breaker_failure_threshold: int = 5
    breaker_cooldown_s: float = 30.0
    api_redis_timeout_s: float = Field(
        default=0.25, gt=0, description="The api's Redis calls (the deployments' rpm/tpm counters): slower is a "
                                        "failure, and the ceiling goes unchecked.")

    cache_redis_url: str | None = Field(
        default=None, description="The response cache's Redis, when it is not the api's REDIS_URL (same "
                                  "REDIS_CLUSTER and API_REDIS_TIMEOUT_S).")

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

    def provider_endpoints(self, config: ApiConfig) -> dict[str, ProviderEndpoint]:
        """Every provider the gateway may call (ProviderSettings.providers), each only when it has its key
        or needs none: an implicit one without its key is never tried, as before providers were
        configurable."""
        return {name: self._endpoint(name, provider.config, provider.key)
                for name, provider in self.providers(config.providers).items() if provider.usable}

    def _endpoint(self, name: str, provider: ProviderConfig, key: SecretStr | None) -> ProviderEndpoint:
        return ProviderEndpoint(
            name=name, kind=provider.kind, base_url=provider.base_url, api_key=key,
            timeout_s=provider.timeout_s or self.provider_timeout_s,
            connect_timeout_s=provider.connect_timeout_s or self.provider_connect_timeout_s,
            max_retries=self.provider_max_retries if provider.max_retries is None else provider.max_retries,
            api_version=(provider.api_version or AZURE_API_VERSION) if provider.kind == "azure" else None,
            rpm=provider.rpm, tpm=provider.tpm)
