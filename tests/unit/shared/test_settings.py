"""Settings from the environment and the YAML file, each service reading its own part."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from services.api.settings import ApiSettings
from services.limiter.settings import LimiterSettings
from shared.config_file import ConfigError


def test_yaml_config_replaces_tiers(tmp_path):
    path = tmp_path / "costwarden.yaml"
    path.write_text("""
tiers:
  anonymous: {requests: 1, strict_requests: 1, tokens_per_minute: 100, daily_budget_usd: "0.01"}
  free: {requests: 5, strict_requests: 1, tokens_per_minute: 100, daily_budget_usd: "0.50"}
  pro: {requests: 50, strict_requests: 5, tokens_per_minute: 1000, daily_budget_usd: "5"}
  enterprise: {requests: 500, strict_requests: 50, tokens_per_minute: 10000, daily_budget_usd: "50"}
prices:
  my-model: {input: "1.00", output: "2.00"}
""")
    config = LimiterSettings(costwarden_config=path).file_config()
    assert config.tiers["free"].requests == 5 and config.prices["my-model"]["output"] == Decimal("2.00")
    path.write_text("tiers:\n  free: {requests: 5, strict_requests: 1, tokens_per_minute: 1, daily_budget_usd: 1}\n")
    with pytest.raises(ConfigError, match="tiers missing"):
        LimiterSettings(costwarden_config=path).file_config()


def test_settings_read_the_original_environment_names(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://db/x")
    monkeypatch.setenv("TOGETHER_API_KEY", "secret-value")
    monkeypatch.setenv("TRUSTED_PROXIES", "10.0.0.0/8, 192.168.0.1")
    settings = ApiSettings()
    assert settings.database_url == "postgresql://db/x"
    assert "secret-value" not in repr(settings)
    assert settings.trusted_proxies == ["10.0.0.0/8", "192.168.0.1"]


def test_litellm_price_file_and_fallback_from_yaml(tmp_path):
    prices = tmp_path / "model_prices_and_context_window.json"
    prices.write_text(json.dumps({"vendor/model-x": {"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05}}))
    config_file = tmp_path / "costwarden.yaml"
    config_file.write_text(f"litellm_prices_file: {prices}\nfallback_price: {{input: '1', output: '2'}}\n"
                           "prices:\n  vendor/model-x: {input: '2.5', output: '12'}\n  only-yaml: {input: '1', output: '1'}\n")
    catalog = LimiterSettings(costwarden_config=config_file).file_config().price_catalog()
    assert catalog.price("vendor/model-x").input == Decimal("2.5")  # the YAML wins over the file
    assert catalog.cost("only-yaml", 1_000_000, 1_000_000).usd == Decimal(2)
    unknown = catalog.cost("nobody-priced-this", 1_000_000, 1_000_000)
    assert (unknown.usd, unknown.priced) == (Decimal(3), False)


def test_models_take_their_routes_alone_or_with_a_ceiling_and_prices_may_name_a_provider(tmp_path):
    path = tmp_path / "costwarden.yaml"
    path.write_text("""
models:
  plain: [{provider: together_ai, model: vendor/plain}, {provider: openai, model: gpt-4o}]
  capped: {routes: [{provider: openai, model: gpt-4o-mini}], max_tokens: 256}
prices:
  openai/gpt-4o: {input: "3", output: "12"}
""")
    config = LimiterSettings(costwarden_config=path).file_config()
    assert config.models["plain"].served_by() == [("together_ai", "vendor/plain"), ("openai", "gpt-4o")]
    assert (config.models["plain"].max_tokens, config.models["capped"].max_tokens) == (None, 256)
    catalog = config.price_catalog()
    assert catalog.price("gpt-4o", "openai").input == Decimal("3") and catalog.price("gpt-4o").input == Decimal("2.50")
    path.write_text("models:\n  empty: []\n")
    with pytest.raises(ConfigError, match="routes"):
        LimiterSettings(costwarden_config=path).file_config()
