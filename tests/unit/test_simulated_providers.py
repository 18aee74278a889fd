"""What `make run` plays on the simulator besides Together.ai, and the configuration it writes: every
simulated kind declared and routed, priced, and never in place of what the user declared."""

from __future__ import annotations

from pathlib import Path

import yaml

from services.config_check import check
from services.simulated_providers import SIMULATOR_KEY_ENV, to_simulate, with_simulated
from shared.policy import DEFAULT_MODELS


def written(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "costwarden.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_without_a_configuration_every_kind_is_simulated_beside_the_built_in_models(tmp_path, monkeypatch):
    monkeypatch.setenv(SIMULATOR_KEY_ENV, "simulator")
    kinds = to_simulate({})
    assert [(k.provider, k.kind, k.model) for k in kinds] == [("anthropic", "anthropic", "claude-sonnet-4"),
                                                              ("azure", "azure", "gpt-4o-azure")]
    config = with_simulated({}, {kind: f"http://127.0.0.1:{port}" for kind, port in zip(kinds, (20001, 20002), strict=True)})
    assert config["providers"] == {
        "anthropic": {"kind": "anthropic", "base_url": "http://127.0.0.1:20001", "api_key_env": SIMULATOR_KEY_ENV},
        "azure": {"kind": "azure", "base_url": "http://127.0.0.1:20002", "api_key_env": SIMULATOR_KEY_ENV}}
    assert set(config["models"]) == {*DEFAULT_MODELS, "claude-sonnet-4", "gpt-4o-azure"}
    assert config["models"]["gpt-4o-azure"] == [{"provider": "azure", "model": "gpt-4o"}]
    assert check(written(tmp_path, config)) == ([], 0)  # valid, and every route priced


def test_the_users_providers_and_models_are_kept_and_a_kind_they_declare_is_not_simulated(tmp_path, monkeypatch):
    monkeypatch.setenv(SIMULATOR_KEY_ENV, "simulator")
    monkeypatch.setenv("CLAUDE_KEY", "sk-ant-real")
    user = {"providers": {"claude": {"kind": "anthropic", "base_url": "https://api.anthropic.com",
                                     "api_key_env": "CLAUDE_KEY"}},
            "models": {"claude-sonnet-4": [{"provider": "claude", "model": "claude-sonnet-4-20250514"}],
                       "gpt-4o-azure": [{"provider": "openai", "model": "gpt-4o"}]},
            "default_model": "claude-sonnet-4"}
    kinds = to_simulate(user)
    assert [k.provider for k in kinds] == ["azure"]
    config = with_simulated(user, {kinds[0]: "http://127.0.0.1:20002"})
    assert config["providers"]["claude"] == user["providers"]["claude"] and set(config["providers"]) == {"claude",
                                                                                                          "azure"}
    assert config["models"] == user["models"]  # the user's model of the same name stays theirs
    assert config["default_model"] == "claude-sonnet-4"
    assert check(written(tmp_path, config)) == ([], 0)


def test_a_provider_name_the_user_took_is_not_simulated():
    assert [k.provider for k in to_simulate({"providers": {"azure": {"kind": "openai", "base_url": "http://x/v1"}}})
            ] == ["anthropic"]
