"""The provider router's retries and fallback, with in-memory provider clients."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from services.api.breaker import CircuitBreaker
from services.api.providers import ProviderError, ProviderRouter, ProvidersFailed
from shared.policy import ModelRoute


class ScriptedProvider:
    """Fails with each of `failures` in turn, then answers."""

    def __init__(self, name: str, failures: list[ProviderError]) -> None:
        self.name = name
        self.failures = list(failures)
        self.calls = 0

    async def complete(self, payload: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return {"model": payload["model"]}, b"{}"

    async def open_stream(self, payload: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


def router(*providers: ScriptedProvider, max_retries: int = 2) -> ProviderRouter:
    return ProviderRouter({p.name: p for p in providers}, {p.name: CircuitBreaker(5, 30) for p in providers},
                          max_retries, retry_initial_s=0.001, retry_max_s=0.002)


ROUTES = [ModelRoute(provider="together_ai", model="llama-together"), ModelRoute(provider="openai", model="gpt-4o-mini")]


async def test_a_retryable_failure_is_retried_and_then_answers():
    together = ScriptedProvider("together_ai", [ProviderError("together_ai", "busy", status=429),
                                                ProviderError("together_ai", "down", status=503)])
    call = await router(together).call(ROUTES, {"messages": []}, stream=False)
    assert (call.provider, together.calls) == ("together_ai", 3)


async def test_retries_are_bounded_then_the_next_provider_answers():
    together = ScriptedProvider("together_ai", [ProviderError("together_ai", "down", status=503)] * 5)
    openai = ScriptedProvider("openai", [])
    call = await router(together, openai, max_retries=2).call(ROUTES, {"messages": []}, stream=False)
    assert (call.provider, call.upstream_model, together.calls, openai.calls) == ("openai", "gpt-4o-mini", 3, 1)


async def test_a_refused_request_is_neither_retried_nor_failed_over():
    together = ScriptedProvider("together_ai", [ProviderError("together_ai", "bad request", status=400)])
    openai = ScriptedProvider("openai", [])
    with pytest.raises(ProvidersFailed) as failed:
        await router(together, openai).call(ROUTES, {"messages": []}, stream=False)
    assert (together.calls, openai.calls, len(failed.value.attempts)) == (1, 0, 1)


async def test_every_attempt_is_kept_when_no_provider_answers():
    together = ScriptedProvider("together_ai", [ProviderError("together_ai", "timed out", timeout=True)] * 3)
    openai = ScriptedProvider("openai", [ProviderError("openai", "timed out", timeout=True)] * 3)
    with pytest.raises(ProvidersFailed) as failed:
        await router(together, openai, max_retries=2).call(ROUTES, {"messages": []}, stream=False)
    assert [a.provider for a in failed.value.attempts] == ["together_ai"] * 3 + ["openai"] * 3
    assert failed.value.timed_out
