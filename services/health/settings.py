"""What the health service reads: how often and how patiently it checks, what it checks (the
database, Redis, NATS, the providers), and its part of the YAML file (extra HTTP checks)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from shared.settings import FilePart, ProviderSettings, RedisSettings


class HttpCheck(BaseModel):
    """An extra HTTP dependency the health service watches (the original checked the Supabase API)."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
    url: str
    expect_status: int = 200
    timeout_s: float | None = Field(default=None, gt=0)


class HealthConfig(FilePart):
    health_checks: list[HttpCheck] = Field(default_factory=list)


class HealthSettings(RedisSettings, ProviderSettings):
    health_port: int = 3001
    health_interval_s: float = Field(default=10.0, gt=0)
    health_check_timeout_s: float = Field(default=3.0, gt=0)
    health_failure_threshold: int = Field(default=3, ge=1)

    def file_config(self) -> HealthConfig:
        return self.file_part(HealthConfig)
