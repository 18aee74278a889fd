from __future__ import annotations

import json
from decimal import Decimal

import pytest
from pydantic import ValidationError

from shared.bus import describe_invalid
from shared.events import LlmCompleted
from shared.logs import scrub
from shared.pricing import PriceCatalog, parse_litellm_prices, to_nano_usd
from shared.settings import Settings


def test_cost_is_exact_decimal_for_the_default_models():
    catalog = PriceCatalog.with_overrides({})
    cost = catalog.cost("meta-llama/Llama-3-70b-chat-hf", 150, 300)
    assert cost.usd == Decimal("0.000405") and cost.priced
    assert catalog.cost("meta-llama/Llama-3-8b-chat-hf", 1_000_000, 0).usd == Decimal("0.2")
    assert catalog.cost("gpt-4o-mini", 1000, 1000, cached_prompt_tokens=400).usd == Decimal("0.00072")


def test_unpriced_model_uses_the_fallback_rate_and_says_so():
    cost = PriceCatalog.with_overrides({}).cost("mystery", 1_000_000, 0)
    assert cost.usd == Decimal("10") and cost.priced is False


def test_overrides_and_litellm_files(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({
        "sample_spec": {"input_cost_per_token": 0},
        "my-model": {"input_cost_per_token": 1.5e-06, "output_cost_per_token": 2e-06,
                     "cache_read_input_token_cost": 7.5e-07},
    }))
    catalog = PriceCatalog.with_overrides({"gpt-4o": {"input": Decimal("1"), "output": Decimal("2")}}, path)
    assert catalog.price("my-model").input == Decimal("1.5") and catalog.price("my-model").cached_input == Decimal("0.75")
    assert catalog.price("gpt-4o").output == Decimal("2")
    assert parse_litellm_prices({"x": "not a dict"}) == {}


def test_nano_dollars_round_up():
    assert to_nano_usd(Decimal("0.000000001")) == 1
    assert to_nano_usd(Decimal("0.0000000011")) == 2


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
    config = Settings(costwarden_config=path).file_config()
    assert config.tiers["free"].requests == 5 and config.prices["my-model"]["output"] == Decimal("2.00")
    path.write_text("tiers:\n  free: {requests: 5, strict_requests: 1, tokens_per_minute: 1, daily_budget_usd: 1}\n")
    with pytest.raises(ValidationError, match="tiers missing"):
        Settings(costwarden_config=path).file_config()


def test_settings_read_the_original_environment_names(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://db/x")
    monkeypatch.setenv("TOGETHER_API_KEY", "secret-value")
    monkeypatch.setenv("TRUSTED_PROXIES", "10.0.0.0/8, 192.168.0.1")
    settings = Settings()
    assert settings.database_url == "postgresql://db/x"
    assert "secret-value" not in repr(settings)
    assert settings.trusted_proxies == ["10.0.0.0/8", "192.168.0.1"]


def test_events_reject_negative_tokens_and_naive_times():
    with pytest.raises(ValidationError) as exc:
        LlmCompleted(request_id="r", provider="p", model="m", prompt_tokens=-1, completion_tokens=0, endpoint="/",
                     success=True, latency_ms=1)
    assert "prompt_tokens" in describe_invalid(exc.value)
    with pytest.raises(ValidationError, match="timezone"):
        LlmCompleted(request_id="r", provider="p", model="m", prompt_tokens=1, completion_tokens=0, endpoint="/",
                     success=True, latency_ms=1, occurred_at="2024-01-01T00:00:00")


def test_logs_scrub_secrets():
    line = scrub("calling with Authorization: Bearer sk-abc123 to postgresql://user:hunter2@db/x api_key=zzz")
    assert "sk-abc123" not in line and "hunter2" not in line and "zzz" not in line
    assert "https://hooks.slack.com/services/***" == scrub("https://hooks.slack.com/services/T0/B0/XYZ")
    assert scrub('{"password": "hunter2", "SMTP_PASSWORD":"x1", "token" : \'t0k\'}') == \
        '{"password": "***", "SMTP_PASSWORD":"***", "token" : \'***\'}'
    assert scrub("key sk-proj-AbCdEf0123456789xyz leaked") == "key *** leaked"


def test_logs_keep_setting_names_and_ordinary_words():
    for text in ("not checked: no OPENAI_API_KEY configured",
                 "set SMTP_PASSWORD and SMTP_USERNAME to send email",
                 "the password is required; token bucket refilled; secret santa",
                 "api key rotation scheduled", "task-1234 finished: ask sk-learn maintainers"):
        assert scrub(text) == text


def test_litellm_price_file_and_fallback_from_yaml(tmp_path):
    prices = tmp_path / "model_prices_and_context_window.json"
    prices.write_text(json.dumps({"vendor/model-x": {"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05}}))
    config_file = tmp_path / "costwarden.yaml"
    config_file.write_text(f"litellm_prices_file: {prices}\nfallback_price: {{input: '1', output: '2'}}\n"
                           "prices:\n  vendor/model-x: {input: '2.5', output: '12'}\n  only-yaml: {input: '1', output: '1'}\n")
    catalog = Settings(costwarden_config=config_file).file_config().price_catalog()
    assert catalog.price("vendor/model-x").input == Decimal("2.5")  # the YAML wins over the file
    assert catalog.cost("only-yaml", 1_000_000, 1_000_000).usd == Decimal(2)
    unknown = catalog.cost("nobody-priced-this", 1_000_000, 1_000_000)
    assert (unknown.usd, unknown.priced) == (Decimal(3), False)
