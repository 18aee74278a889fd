"""The kinds of provider `make run` plays on the simulator besides Together.ai (Anthropic and Azure
OpenAI), each declared in the configuration it writes under .run/: the user's file with a provider of
each simulated kind and a public model routed to it, never replacing what the user declared."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.policy import DEFAULT_MODELS, ProviderKind

SIMULATOR_KEY_ENV = "SIMULATOR_API_KEY"  # the simulated providers' key variable, set to a dummy by make run


@dataclass(frozen=True)
class SimulatedKind:
    provider: str  # the provider's name in the configuration
    kind: ProviderKind
    plays: str
    model: str  # the public model routed to it
    served_model: str  # the provider's model (for azure, the deployment), priced by the built-in prices


SIMULATED_KINDS = (SimulatedKind("anthropic", "anthropic", "Anthropic", "claude-sonnet-4", "claude-sonnet-4-20250514"),
                   SimulatedKind("azure", "azure", "Azure OpenAI", "gpt-4o-azure", "gpt-4o"))


def to_simulate(user: Mapping[str, Any]) -> list[SimulatedKind]:
    """The kinds the user's configuration leaves to the simulator: those it declares no provider of (a
    declared provider has its key: no service starts while its key variable is not set) and whose
    provider name it does not take."""
    declared = user.get("providers") or {}
    kinds = {provider.get("kind") for provider in declared.values() if isinstance(provider, Mapping)}
    return [simulated for simulated in SIMULATED_KINDS
            if simulated.kind not in kinds and simulated.provider not in declared]


def with_simulated(user: Mapping[str, Any], base_urls: Mapping[SimulatedKind, str]) -> dict[str, Any]:
    """The user's configuration with a provider for each simulated kind (at its base URL) and its public
    model, unless the user has a model of that name. Without `models:` in the user's file the built-in
    models are kept beside them."""
    models = dict(user["models"]) if "models" in user else {
        name: model.model_dump(mode="json", exclude_defaults=True) for name, model in DEFAULT_MODELS.items()}
    providers = dict(user.get("providers") or {})
    for simulated, base_url in base_urls.items():
        providers[simulated.provider] = {"kind": simulated.kind, "base_url": base_url,
                                         "api_key_env": SIMULATOR_KEY_ENV}
        models.setdefault(simulated.model, [{"provider": simulated.provider, "model": simulated.served_model}])
    return {**user, "providers": providers, "models": models}
