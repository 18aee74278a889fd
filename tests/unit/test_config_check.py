"""`costwarden config check` names each mistake of the YAML file with its position and field, and a
service refuses to start on the same mistake with the same message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.api.settings import ApiSettings
from services.config_check import check
from services.limiter.settings import LimiterSettings
from shared.config_file import ConfigError
from tests.servers import ROOT

VALID = """\
providers:
  anthropic:
    kind: anthropic
    base_url: https://api.anthropic.com
    api_key_env: CW_TEST_ANTHROPIC_KEY
  azure-east:
    kind: azure
    base_url: https://east.openai.azure.com
    api_key_env: CW_TEST_AZURE_KEY
    api_version: "2024-10-21"
    rpm: 600
  vllm:
    kind: openai
    base_url: http://10.0.0.5:8000/v1
models:
  claude:
    routes: [{provider: anthropic, model: claude-sonnet-4-20250514}]
    max_tokens: 4096
  gpt-4o:
    strategy: weighted
    routes:
      - {provider: azure-east, model: gpt-4o, weight: 3}
      - {provider: openai, model: gpt-4o, weight: 1}
  embed:
    serves: embeddings
    routes: [{provider: azure-east, model: text-embedding-3-small}]
"""


@pytest.fixture
def keys(monkeypatch):
    monkeypatch.setenv("CW_TEST_ANTHROPIC_KEY", "sk-ant-x")
    monkeypatch.setenv("CW_TEST_AZURE_KEY", "azure-x")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "costwarden.yaml"
    path.write_text(text)
    return path


def test_a_config_with_three_kinds_of_provider_is_valid(tmp_path, keys):
    path = write(tmp_path, VALID)
    assert check(path) == ([], 0)
    config = ApiSettings(_env_file=None, costwarden_config=path).file_config()
    endpoints = ApiSettings(_env_file=None, costwarden_config=path, together_api_key=None,
                            openai_api_key="sk-openai").provider_endpoints(config)
    assert {name: e.kind for name, e in endpoints.items()} == {"openai": "openai", "anthropic": "anthropic",
                                                               "azure-east": "azure", "vllm": "openai"}
    assert endpoints["azure-east"].api_key.get_secret_value() == "azure-x" and endpoints["azure-east"].rpm == 600
    assert endpoints["vllm"].api_key is None  # no key variable: calls carry no key
    assert config.models["gpt-4o"].strategy == "weighted" and config.models["embed"].serves == "embeddings"


@pytest.mark.parametrize(("mistake", "fixed", "expected"), [
    ("{provider: anthropic, model: claude-sonnet-4-20250514}", "{provider: antropic, model: claude-sonnet-4-20250514}",
     "17:25: error: models.claude.routes[0].provider: unknown provider 'antropic' (known: anthropic, azure-east, "
     "openai, together_ai, vllm)"),
    ("{provider: azure-east, model: gpt-4o, weight: 3}", "{provider: azure-east, model: gpt-4o, weight: 0}",
     "22:55: error: models.gpt-4o.routes[0].weight: Input should be greater than 0"),
    ("    rpm: 600\n", "    rpm: 600\n    rmp: 10\n",
     "12:10: error: providers.azure-east.rmp: Extra inputs are not permitted"),
    ("    base_url: http://10.0.0.5:8000/v1\n", "    base_url: http://10.0.0.5:8000/v1\n    api_version: v1\n",
     "12:3: error: providers.vllm: api_version applies to azure providers only"),
    ("routes: [{provider: azure-east, model: text-embedding-3-small}]",
     "routes: [{provider: anthropic, model: text-embedding-3-small}]",
     "26:25: error: models.embed.routes[0].provider: provider 'anthropic' is of kind anthropic, which serves no "
     "embeddings"),
])
def test_each_mistake_is_named_with_its_position_and_field(tmp_path, keys, mistake, fixed, expected):
    assert mistake in VALID
    path = write(tmp_path, VALID.replace(mistake, fixed))
    lines, errors = check(path)
    assert errors == 1 and lines == [f"{path}:{expected}"]


def test_a_key_variable_that_is_not_set_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CW_TEST_ANTHROPIC_KEY", "sk-ant-x")
    monkeypatch.delenv("CW_TEST_AZURE_KEY", raising=False)
    path = write(tmp_path, VALID)
    assert check(path) == ([f"{path}:9:18: error: providers.azure-east.api_key_env: CW_TEST_AZURE_KEY is not set: "
                            "the key of provider 'azure-east' is read from it"], 1)
    LimiterSettings(_env_file=None, costwarden_config=path).file_config()  # the limiter calls no provider


def test_a_model_without_a_price_is_a_warning_and_an_unread_key_too(tmp_path, keys):
    path = write(tmp_path, VALID + "modles:\n  x: []\n" + """\
  mine:
    - {provider: vllm, model: my-finetune}
""".replace("  mine:", "models_extra:\n  mine:"))
    lines, errors = check(path)
    assert errors == 0
    assert lines == [f"{path}:27:1: warning: modles: no service reads this key",
                     f"{path}:29:1: warning: models_extra: no service reads this key"]
    path = write(tmp_path, VALID.replace("model: claude-sonnet-4-20250514", "model: claude-next"))
    assert check(path) == ([f"{path}:17:43: warning: models.claude.routes[0].model: no price for anthropic/claude-next: "
                            "billed at the fallback price ($10.00 input, $30.00 output per 1M tokens); add it to "
                            "prices:"], 0)


def test_the_list_of_routes_alone_is_located_too(tmp_path, keys):
    path = write(tmp_path, "models:\n  plain:\n    - {provider: nobody, model: m}\n")
    lines, errors = check(path)
    assert errors == 1 and lines[0].startswith(f"{path}:3:18: error: models.plain.routes[0].provider: unknown provider")
    assert lines[1] == (f"{path}:3:33: warning: models.plain.routes[0].model: no price for nobody/m: billed at the "
                        "fallback price ($10.00 input, $30.00 output per 1M tokens); add it to prices:")


def test_yaml_that_does_not_parse_is_located(tmp_path):
    path = write(tmp_path, "models:\n  a: [unclosed\n")
    [line], errors = check(path)
    assert errors == 1 and line.startswith(f"{path}:3:1: error: not valid YAML:")
    with pytest.raises(ConfigError) as refused:
        LimiterSettings(_env_file=None, costwarden_config=path).file_config()
    assert str(refused.value) == line


def test_the_command_and_a_service_refuse_a_mistake_with_the_same_message(tmp_path):
    path = write(tmp_path, "models:\n  m: [{provider: groq, model: llama}]\n")
    env = {**os.environ, "COSTWARDEN_CONFIG": str(path), "NATS_URL": "nats://127.0.0.1:1"}
    command = subprocess.run([sys.executable, "-m", "services.cli", "config", "check"], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    service = subprocess.run([sys.executable, "-m", "services.limiter"], env=env, cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
    message = (f"{path}:2:18: error: models.m.routes[0].provider: unknown provider 'groq' "
               "(known: openai, together_ai)")
    assert command.returncode == 1 and message in command.stderr.splitlines()
    assert service.returncode == 2 and service.stderr.splitlines() == ["invalid configuration, not starting:", message]


def test_the_gateway_refuses_to_start_without_a_declared_providers_key(tmp_path):
    path = write(tmp_path, "providers:\n  groq: {kind: openai, base_url: 'https://api.groq.com/openai/v1', "
                           "api_key_env: CW_TEST_UNSET_KEY}\n")
    env = {key: value for key, value in os.environ.items() if key != "CW_TEST_UNSET_KEY"}
    gateway = subprocess.run([sys.executable, "-m", "services.api"], env={**env, "COSTWARDEN_CONFIG": str(path)},
                             cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert gateway.returncode == 2 and gateway.stderr.splitlines() == [
        "invalid configuration, not starting:",
        f"{path}:2:81: error: providers.groq.api_key_env: CW_TEST_UNSET_KEY is not set: the key of provider 'groq' "
        "is read from it"]


def test_a_price_map_that_cannot_be_read_is_named(tmp_path):
    path = write(tmp_path, "litellm_prices_file: /nonexistent/prices.json\n")
    assert check(path) == ([f"{path}:1:22: error: litellm_prices_file: cannot read /nonexistent/prices.json: "
                            "No such file or directory"], 1)


CACHED = """\
cache:
  enabled: true
  ttl_s: 600
models:
  gpt-4o-mini:
    routes: [{provider: openai, model: gpt-4o-mini}]
    cache: {ttl_s: 60, shared: true}
"""


@pytest.mark.parametrize(("mistake", "fixed", "expected"), [
    ("ttl_s: 600", "ttl_s: 0", "3:10: error: cache.ttl_s: Input should be greater than 0"),
    ("  enabled: true", "  enabled: sometimes", "2:12: error: cache.enabled: Input should be a valid boolean, unable "
                                                "to interpret input"),
    ("ttl_s: 600", "ttl_s: 600\n  max_entry_bytes: -1", "4:20: error: cache.max_entry_bytes: Input should be greater "
                                                         "than 0"),
    ("shared: true}", "shared: true, ttl: 5}", "7:43: error: models.gpt-4o-mini.cache.ttl: Extra inputs are not "
                                               "permitted"),
])
def test_the_response_caches_settings_are_checked(tmp_path, mistake, fixed, expected):
    assert check(write(tmp_path, CACHED)) == ([], 0)
    path = write(tmp_path, CACHED.replace(mistake, fixed))
    lines, errors = check(path)
    assert errors == 1 and lines == [f"{path}:{expected}"]


def test_the_readmes_configuration_is_valid_and_every_route_priced(tmp_path, monkeypatch):
    """What a newcomer copies from the README must pass `config check` with no warning."""
    readme = (ROOT / "README.md").read_text()
    example = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    for variable in ("ANTHROPIC_API_KEY", "AZURE_EAST_KEY", "GROQ_API_KEY"):
        monkeypatch.setenv(variable, "x")
    assert "anthropic" in example and "azure" in example and "kind: openai" in example
    assert check(write(tmp_path, example)) == ([], 0)
