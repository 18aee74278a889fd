"""How a service reads its configuration, once at start.

Each service declares the settings it reads (services/<name>/settings.py) over the connection
settings here: from the environment (or a `.env` file), under the names the original deployment used;
and its part of the YAML file named by COSTWARDEN_CONFIG (docs/configuration.md), in which each
service validates only the keys it reads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Literal, TypeGuard, TypeVar

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.config_file import ConfigDocument, Problem
from shared.policy import (
    DEFAULT_MODELS,
    DEFAULT_TIERS,
    ModelConfig,
    ProviderConfig,
    Thresholds,
    TierLimits,
    routing_problems,
)
from shared.pricing import ModelPrice, PriceCatalog, parse_litellm_prices

Part = TypeVar("Part", bound=BaseModel)


class ServiceSettings(BaseSettings):
    """What every service reads: the database, the bus and its identity on it, where it listens, how it
    logs, and the YAML file."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    database_url: str = "postgresql://postgres@127.0.0.1:5432/costwarden"
    nats_url: str = Field(default="nats://127.0.0.1:4222",
                          description="One server, or a comma-separated list of a cluster's servers.")
    nats_nkey_seed_file: str | None = Field(
        default=None, description="This identity's NKEY seed file (costwarden nats-config); unset: no authentication.")
    host: str = "127.0.0.1"
    costwarden_config: Path | None = None
    log_level: str = "INFO"
    log_format: Literal["auto", "json", "text"] = Field(
        default="auto", description="auto: readable lines in a terminal, JSON lines otherwise.")

    @property
    def nats_servers(self) -> list[str]:
        """NATS_URL as a list: clients connect to any of them and fail over between them by themselves."""
        return [server.strip() for server in self.nats_url.split(",") if server.strip()]

    def file_part(self, part: type[Part]) -> Part:
        """The part of the YAML file that `part` declares (its defaults when no file is named); a
        ConfigError naming the position and field of each mistake (shared/config_file.py)."""
        if self.costwarden_config is None:
            return part()
        return ConfigDocument.read(self.costwarden_config).part(part)


def environment_value(name: str) -> str | None:
    """A variable as the settings read it: from the environment, else the `.env` file; empty is unset."""
    value = os.environ.get(name)
    if value is None and Path(".env").is_file():
        value = dotenv_values(".env").get(name)
    return value or None


class RedisSettings(ServiceSettings):
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_cluster: bool = Field(default=False, description="REDIS_URL is a seed node of a Redis Cluster.")


@dataclass(frozen=True)
class ReachableProvider:
    """A provider the gateway may call: its configuration, its key and the variable the key is read
    from (None: calls carry no key)."""

    config: ProviderConfig
    key: SecretStr | None
    key_env: str | None

    @property
    def usable(self) -> bool:
        """Tried by the gateway: it has its key, or needs none."""
        return self.key_env is None or is_set(self.key)


class ProviderSettings(ServiceSettings):
    """The LLM providers (called by the api, checked by the health service)."""

    together_api_key: SecretStr | None = None
    together_base_url: str = "https://api.together.xyz/v1"
    openai_api_key: SecretStr | None = None
    openai_base_url: str = "https://api.openai.com/v1"

    def providers(self, declared: Mapping[str, ProviderConfig]) -> dict[str, ReachableProvider]:
        """The `declared` providers, and `together_ai` and `openai` from their TOGETHER_* and OPENAI_*
        settings unless declared (a declared one of the same name replaces them), each with its key."""
        implicit = {"together_ai": (self.together_base_url, self.together_api_key, "TOGETHER_API_KEY"),
                    "openai": (self.openai_base_url, self.openai_api_key, "OPENAI_API_KEY")}
        found = {name: ReachableProvider(ProviderConfig(kind="openai", base_url=base_url), key, key_env)
                 for name, (base_url, key, key_env) in implicit.items() if name not in declared}
        for name, provider in declared.items():
            key = environment_value(provider.api_key_env) if provider.api_key_env else None
            found[name] = ReachableProvider(provider, SecretStr(key) if key else None, provider.api_key_env)
        return found


class CallLimitSettings(ServiceSettings):
    """What the api and the limiter must agree on: what a call without a limit may generate, the most a
    call may reserve, and what happens when no limit can be checked."""

    limiter_failure_mode: Literal["closed", "open"] = "closed"
    default_max_tokens: int = 1024
    reservation_cap_tokens: int = 32_768


class FilePart(BaseModel):
    """A service's part of the YAML file: the keys it reads; it ignores the others. `problems` are the
    mistakes one field's validation cannot see (a route to a provider declared nowhere), each with
    where it is."""

    model_config = ConfigDict(extra="ignore")

    def problems(self) -> list[Problem]:
        return []


class PricesPart(FilePart):
    """The prices (read by the limiter, to reserve and settle, and by the cost service, to record)."""

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

    @field_validator("litellm_prices_file")
    @classmethod
    def _readable_price_map(cls, path: Path | None) -> Path | None:
        if path is not None:
            try:
                data = json.loads(path.read_text())
            except OSError as exc:
                raise ValueError(f"cannot read {path}: {exc.strerror}") from None
            except ValueError as exc:
                raise ValueError(f"{path} is not JSON: {exc}") from None
            if not isinstance(data, dict):
                raise ValueError(f"{path} must hold a JSON object of models")
        return path

    def price_catalog(self) -> PriceCatalog:
        litellm = self.litellm_prices_file
        return PriceCatalog.with_overrides(
            self.prices, parse_litellm_prices(json.loads(litellm.read_text())) if litellm else None,
            fallback=ModelPrice(self.fallback_price["input"], self.fallback_price["output"]),
        )


class TiersPart(FilePart):
    """The tiers and their limits (enforced by the limiter; the api and the console offer their names)."""

    tiers: dict[str, TierLimits] = Field(default_factory=lambda: dict(DEFAULT_TIERS))

    @field_validator("tiers")
    @classmethod
    def _all_tiers_present(cls, tiers: dict[str, TierLimits]) -> dict[str, TierLimits]:
        missing = set(DEFAULT_TIERS) - set(tiers)
        if missing:
            raise ValueError(f"tiers missing from config: {sorted(missing)}")
        return tiers

    @property
    def key_tiers(self) -> list[str]:
        """The tiers an API key may have: every one but the anonymous callers'."""
        return sorted(name for name in self.tiers if name != "anonymous")


class ModelsPart(FilePart):
    """The providers, and the public models with their routes (served by the api, reserved for by the
    limiter). `providers` adds to (or replaces by name) the two implicit ones, `together_ai` and
    `openai`, which the TOGETHER_* and OPENAI_* settings describe."""

    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    models: dict[str, ModelConfig] = Field(default_factory=lambda: dict(DEFAULT_MODELS))

    def problems(self) -> list[Problem]:
        return [*super().problems(),
                *(Problem(where, message) for where, message in routing_problems(self.providers, self.models))]


def missing_keys(providers: Mapping[str, ProviderConfig]) -> list[Problem]:
    """A declared provider whose key variable is not set (read where the provider is called)."""
    return [Problem(("providers", name, "api_key_env"), f"{provider.api_key_env} is not set: the key of provider "
                                                        f"{name!r} is read from it")
            for name, provider in providers.items()
            if provider.api_key_env and environment_value(provider.api_key_env) is None]


def unpriced_routes(models: Mapping[str, ModelConfig], catalog: PriceCatalog) -> list[Problem]:
    """A warning for each route whose model has no price: its calls are billed at the fallback price."""
    fallback = catalog.fallback
    return [Problem(("models", public, "routes", index, "model"),
                    f"no price for {route.provider}/{route.model}: billed at the fallback price "
                    f"(${fallback.input} input, ${fallback.output} output per 1M tokens); add it to prices:",
                    "warning")
            for public, model in models.items() for index, route in enumerate(model.routes)
            if catalog.price(route.model, route.provider) is None]


class ThresholdsPart(FilePart):
    """The spend thresholds (alerted on by the cost service, drawn by the console)."""

    thresholds: Thresholds = Field(default_factory=Thresholds)


def is_set(secret: SecretStr | None) -> TypeGuard[SecretStr]:
    """A secret setting counts as given only when it is not empty (KEY= in a .env file is "off")."""
    return secret is not None and bool(secret.get_secret_value())
