"""The provider check of each kind against the simulator in that mode: the request each kind of API
answers with its key checked, the key carried as that API takes it, and failures told without it."""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr

from services.health.checks import provider_probe
from services.health.monitor import run_check
from services.health.settings import HealthConfig, HealthSettings
from services.simulator.app import create_app as create_simulator
from shared.config_file import ConfigDocument
from shared.policy import ProviderConfig
from shared.settings import ReachableProvider
from tests.conftest import set_faults
from tests.servers import ThreadedHttpServer, free_port

KEY = "sk-health-probe-secret"


def reachable(kind: str, base_url: str, key: str | None = KEY, api_version: str | None = None) -> ReachableProvider:
    return ReachableProvider(ProviderConfig(kind=kind, base_url=base_url, api_version=api_version),  # type: ignore[arg-type]
                             SecretStr(key) if key else None, "PROVIDER_KEY")


async def check(provider: ReachableProvider, timeout_s: float = 2.0):
    async with httpx.AsyncClient(timeout=timeout_s) as http:
        return await run_check(provider_probe(http, provider, "responding normally"), timeout_s)


def last_call(server: ThreadedHttpServer) -> dict:
    return httpx.get(f"{server.url}/_sim/calls").json()[-1]


@pytest.mark.parametrize(("kind", "path", "api_version"), [
    ("openai", "/v1/models", None),
    ("azure", "/openai/models", "2024-10-21"),
    ("anthropic", "/v1/models", None),
])
async def test_each_kind_lists_its_models_with_its_key_as_its_api_takes_it(kind, path, api_version, providers,
                                                                            azure_sim, anthropic_sim):
    server = {"openai": providers["openai"], "azure": azure_sim, "anthropic": anthropic_sim}[kind]
    base_url = f"{server.url}/v1" if kind == "openai" else server.url
    result = await check(reachable(kind, base_url))
    assert (result.status, result.message) == ("healthy", "responding normally")
    assert last_call(server) == {"path": path, "api_version": api_version, "key": KEY}


async def test_an_azure_provider_is_asked_with_its_own_api_version(azure_sim):
    await check(reachable("azure", azure_sim.url, api_version="2025-01-01-preview"))
    assert last_call(azure_sim)["api_version"] == "2025-01-01-preview"


@pytest.mark.parametrize("kind", ["openai", "azure", "anthropic"])
async def test_a_failing_or_unreachable_provider_is_unhealthy_and_its_key_is_never_told(kind):
    server = ThreadedHttpServer(create_simulator(kind, kind)).start()
    base_url = f"{server.url}/v1" if kind == "openai" else server.url
    try:
        set_faults(server, status=503, count=1)
        failed = await check(reachable(kind, base_url))
        healthy = await check(reachable(kind, base_url))
    finally:
        server.stop()
    unreachable = await check(reachable(kind, base_url))
    assert (failed.status, failed.message) == ("unhealthy", "HTTP 503")
    assert healthy.status == "healthy"
    assert (unreachable.status, unreachable.message) == ("unhealthy", "ConnectError")
    assert KEY not in failed.message + unreachable.message


async def test_a_provider_without_its_key_is_not_checked():
    result = await check(reachable("anthropic", f"http://127.0.0.1:{free_port()}", key=None))
    assert (result.status, result.message) == ("skipped", "not checked: no PROVIDER_KEY configured")


def test_every_provider_is_watched_the_implicit_two_under_their_old_names(tmp_path, monkeypatch):
    monkeypatch.setenv("CLAUDE_KEY", "sk-ant")
    monkeypatch.delenv("AZURE_KEY", raising=False)
    path = tmp_path / "costwarden.yaml"
    path.write_text("providers:\n"
                    "  claude: {kind: anthropic, base_url: 'http://claude.test', api_key_env: CLAUDE_KEY}\n"
                    "  azure-east: {kind: azure, base_url: 'http://azure.test', api_key_env: AZURE_KEY}\n"
                    "  local: {kind: openai, base_url: 'http://vllm.test/v1'}\n")
    settings = HealthSettings(_env_file=None, costwarden_config=path, together_api_key="sk-together",
                              openai_api_key=None)
    watched = settings.watched_providers(settings.file_config())
    assert list(watched) == ["togetherAI", "openAI", "claude", "azure-east", "local"]
    assert [name for name, provider in watched.items() if provider.usable] == ["togetherAI", "claude", "local"]
    assert watched["claude"].key.get_secret_value() == "sk-ant"  # type: ignore[union-attr]


def test_a_provider_named_as_another_check_is_a_configuration_error(tmp_path):
    path = tmp_path / "costwarden.yaml"
    path.write_text("providers:\n  redis: {kind: openai, base_url: 'http://x.test/v1'}\n"
                    "  supabase: {kind: openai, base_url: 'http://y.test/v1'}\n"
                    "health_checks:\n  - {name: supabase, url: 'http://z.test/'}\n")
    _, problems = ConfigDocument.read(path).validate(HealthConfig)
    assert [(p.location, p.severity) for p in problems] == [(("providers", "redis"), "error"),
                                                            (("providers", "supabase"), "error")]
    assert "would be reported as 'redis'" in problems[0].message
