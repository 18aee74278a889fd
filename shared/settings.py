"""Configuration, read once at start.

Connection settings come from the environment under the names the original deployment used.
Tiers, policies, prices and thresholds have defaults in code and can be replaced by the YAML
file named by COSTWARDEN_CONFIG (see docs/configuration.md).
"""

from __future__ import annotations

import json
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, TypeGuard

import yaml
from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.policy import DEFAULT_MODELS, DEFAULT_ROUTES, DEFAULT_TIERS, ModelConfig, Route, Thresholds, TierLimits
from shared.pricing import ModelPrice, PriceCatalog, parse_litellm_prices


class HttpCheck(BaseModel):
    """An extra HTTP dependency the health service watches (the original checked the Supabase API)."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
    url: str
    expect_status: int = 200
    timeout_s: float | None = Field(default=None, gt=0)


class FileConfig(BaseModel):
    """The part of the configuration an operator may replace with COSTWARDEN_CONFIG (YAML)."""

    tiers: dict[str, TierLimits] = Field(default_factory=lambda: dict(DEFAULT_TIERS))
    models: dict[str, ModelConfig] = Field(default_factory=lambda: dict(DEFAULT_MODELS))
    default_model: str = "meta-llama/Llama-3-70b-chat-hf"
    prices: dict[str, dict[str, Decimal]] = Field(
        default_factory=dict,
        description="Extra or overriding prices, USD per 1M tokens: model or provider/model -> "
                    "{input, output[, cached_input]}.",
    )
    litellm_prices_file: Path | None = Field(
        default=None, description="A price map in LiteLLM's model_prices_and_context_window.json format.")
    fallback_price: dict[str, Decimal] = Field(
        default_factory=lambda: {"input": Decimal("10.00"), "output": Decimal("30.00")},
        description="USD per 1M tokens charged for a model with no price (the row is marked unpriced).")
    thresholds: Thresholds = Field(default_factory=Thresholds)
    retention_days: int = Field(default=90, gt=0)
    health_checks: list[HttpCheck] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=lambda: list(DEFAULT_ROUTES),
                                description="First matching route wins; resolved alerts follow their original.")

    def price_catalog(self) -> PriceCatalog:
        litellm = self.litellm_prices_file
        return PriceCatalog.with_overrides(
            self.prices, parse_litellm_prices(json.loads(litellm.read_text())) if litellm else None,
            fallback=ModelPrice(self.fallback_price["input"], self.fallback_price["output"]),
        )

    @field_validator("tiers")
    @classmethod
    def _all_tiers_present(cls, tiers: dict[str, TierLimits]) -> dict[str, TierLimits]:
        missing = set(DEFAULT_TIERS) - set(tiers)
        if missing:
            raise ValueError(f"tiers missing from config: {sorted(missing)}")
        return tiers


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    database_url: str = "postgresql://postgres@127.0.0.1:5432/costwarden"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_cluster: bool = Field(default=False, description="REDIS_URL is a seed node of a Redis Cluster.")
    nats_url: str = Field(default="nats://127.0.0.1:4222",
                          description="One server, or a comma-separated list of a cluster's servers.")
    nats_stream_replicas: int = Field(default=1, ge=1, le=5, description="Replicas of every JetStream stream.")
    nats_nkey_seed_file: str | None = Field(
        default=None, description="This identity's NKEY seed file (costwarden nats-config); unset: no authentication.")

    together_api_key: SecretStr | None = None
    together_base_url: str = "https://api.together.xyz/v1"
    openai_api_key: SecretStr | None = None
    openai_base_url: str = "https://api.openai.com/v1"
    provider_timeout_s: float = 60.0
    provider_connect_timeout_s: float = 3.0
    provider_max_retries: int = 2
    breaker_failure_threshold: int = 5
    breaker_cooldown_s: float = 30.0

    limiter_failure_mode: Literal["closed", "open"] = "closed"
    limiter_redis_timeout_s: float = 0.25
    limiter_request_timeout_s: float = 0.5
    cost_query_timeout_s: float = 10.0
    reservation_cap_tokens: int = 32_768
    default_max_tokens: int = 1024
    reservation_ttl_s: int = 900

    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_body_bytes: int = 1_000_000
    api_key_cache_s: float = 30.0
    upgrade_url: str = "/pricing"

    host: str = "127.0.0.1"
    api_port: int = 3000
    api_workers: int = Field(default=1, ge=1, description="uvicorn worker processes of the api service.")
    health_port: int = 3001
    limiter_port: int = 3002
    cost_port: int = 3003
    notifier_port: int = 3004
    backup_port: int = 3005
    console_port: int = 3006
    simulator_port: int = 3010

    slack_webhook_url: SecretStr | None = None
    alert_email: str | None = None
    alert_email_from: str = "costwarden@localhost"
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    smtp_timeout_s: float = 10.0
    smtp_ca_file: str | None = Field(default=None, description="CA bundle to verify the SMTP server (STARTTLS).")
    alert_webhook_url: SecretStr | None = None
    alert_webhook_secret: SecretStr | None = None
    notify_repeat_interval_s: float = 4 * 3600
    notify_claim_lease_s: float = 60.0
    notify_group_window_s: float = 2.0
    notify_max_attempts: int = 5
    notify_backoff_initial_s: float = 1.0
    notify_backoff_max_s: float = 20.0

    health_interval_s: float = Field(default=10.0, gt=0)
    health_check_timeout_s: float = Field(default=3.0, gt=0)
    health_failure_threshold: int = Field(default=3, ge=1)

    s3_backup_bucket: str | None = None
    s3_backup_prefix: str = Field(default="database-backups", min_length=1, pattern=r"^[^/].*[^/]$|^[^/]$")
    aws_region: str | None = None
    backup_database_url: str | None = Field(default=None, description="What to back up; DATABASE_URL if unset.")
    backup_sse: Literal["AES256", "aws:kms"] = "AES256"
    backup_kms_key_id: str | None = None
    backup_storage_class: str = "STANDARD_IA"
    backup_part_size_mb: int = Field(default=16, ge=5)
    backup_schedule: str = "0 2 * * *"
    backup_retention_days: int = Field(default=90, ge=1)
    backup_keep_last: int = Field(default=7, ge=1)
    backup_request_ttl_s: float = Field(default=3600, gt=0, description="A backup request older than this is not run.")
    pg_dump_path: str = "pg_dump"
    pg_restore_path: str = "pg_restore"

    console_session_secret: SecretStr | None = Field(
        default=None, description="Encrypts and signs the console's session cookies; the same on every replica.")
    console_session_hours: float = Field(default=12, gt=0, description="A console session lasts this long.")
    console_cookie_secure: bool = Field(default=False, description="Send the session cookie over HTTPS only.")
    console_api_url: str = Field(default="http://127.0.0.1:3000", description="The api, for the console's key actions.")
    console_health_url: str = Field(default="http://127.0.0.1:3001", description="The health service, for the console.")

    costwarden_config: Path | None = None
    log_level: str = "INFO"
    log_format: Literal["auto", "json", "text"] = Field(
        default="auto", description="auto: readable lines in a terminal, JSON lines otherwise.")

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def nats_servers(self) -> list[str]:
        """NATS_URL as a list: clients connect to any of them and fail over between them by themselves."""
        return [server.strip() for server in self.nats_url.split(",") if server.strip()]

    def file_config(self) -> FileConfig:
        if self.costwarden_config is None:
            return FileConfig()
        raw = yaml.safe_load(self.costwarden_config.read_text()) or {}
        return FileConfig.model_validate(raw)


def is_set(secret: SecretStr | None) -> TypeGuard[SecretStr]:
    """A secret setting counts as given only when it is not empty (KEY= in a .env file is "off")."""
    return secret is not None and bool(secret.get_secret_value())


@lru_cache
def get_settings() -> Settings:
    return Settings()
