"""What the health service reads: how often and how patiently it checks, what it checks (the
database, Redis, NATS, every provider the gateway may call), and its part of the YAML file (the declared
providers, extra HTTP checks)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from services.health.status import provider_dependency
from shared.config_file import Problem
from shared.policy import ProviderConfig
from shared.settings import FilePart, ProviderSettings, ReachableProvider, RedisSettings

OWN_CHECKS = ("database", "redis", "nats")


class HttpCheck(BaseModel):
    """An extra HTTP dependency the health service watches (the original checked the Supabase API)."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
    url: str
    expect_status: int = 200
    timeout_s: float | None = Field(default=None, gt=0)


class HealthConfig(FilePart):
    """The extra checks, and the declared providers (a provider whose key variable is not set is
    reported as not checked, not refused: the api refuses it)."""

    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    health_checks: list[HttpCheck] = Field(default_factory=list)

    def problems(self) -> list[Problem]:
        """A provider reported under the name of another dependency would hide one of them."""
        taken = {*OWN_CHECKS, *(check.name for check in self.health_checks)}
        return [*super().problems(),
                *(Problem(("providers", name), f"provider {name!r} would be reported as {provider_dependency(name)!r}, "
                                               "which another health check is named: rename one")
                  for name in self.providers if provider_dependency(name) in taken)]


class HealthSettings(RedisSettings, ProviderSettings):
    health_port: int = 3001
    health_interval_s: float = Field(default=10.0, gt=0)
    health_check_timeout_s: float = Field(default=3.0, gt=0)
    health_failure_threshold: int = Field(default=3, ge=1)

    def file_config(self) -> HealthConfig:
        return self.file_part(HealthConfig)

    def watched_providers(self, config: HealthConfig) -> dict[str, ReachableProvider]:
        """Every provider the gateway may call, by the dependency it is reported as."""
        return {provider_dependency(name): provider for name, provider in self.providers(config.providers).items()}
