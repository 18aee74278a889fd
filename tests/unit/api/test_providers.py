"""The provider router with in-memory provider clients: retries and fallback, the order each strategy
gives the routes, routes skipped while their breaker is open or their deployment is over its ceiling,
a provider's Retry-After, and the wait when every route cools down."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytest

from services.api.providers import CeilingsUnavailable, ProviderError, ProvidersFailed, route_order
from shared.policy import ModelRoute
from tests.unit.api.fakes import router_of


class ScriptedProvider:
    """Fails with each of `failures` in turn, then answers."""

    def __init__(self, name: str, failures: list[ProviderError] | None = None) -> None:
        self.name = name
        self.failures = list(failures or ())
        self.calls = 0

    async def complete(self, model: str, payload: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return {"model": model}, b"{}"

    async def embed(self, model: str, payload: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
        return await self.complete(model, payload)

    async def open_stream(self, model: str, payload: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


class Minutes:
    """Shared rpm counters as a fake: each provider takes `rpm` calls, then asks for `wait_s`."""

    def __init__(self, wait_s: float = 12.5, down: bool = False) -> None:
        self.counted: Counter[str] = Counter()
        self.wait_s, self.down = wait_s, down

    async def admit(self, provider: str, rpm: int | None, tpm: int | None, tokens: int) -> float:
        if self.down:
            raise CeilingsUnavailable("ConnectionError")
        if rpm is not None and self.counted[provider] >= rpm:
            return self.wait_s
        self.counted[provider] += 1
        return 0.0


ROUTES = [ModelRoute(provider="together_ai", model="llama-together"), ModelRoute(provider="openai", model="gpt-4o-mini")]


def down(name: str, times: int = 5, **kwargs: Any) -> list[ProviderError]:
    return [ProviderError(name, "down", status=503, **kwargs)] * times


async def test_a_retryable_failure_is_retried_and_then_answers():
    together = ScriptedProvider("together_ai", [ProviderError("together_ai", "busy", status=429),
                                                ProviderError("together_ai", "down", status=503)])
    call = await router_of(together, max_retries=2).call("m", ROUTES, {"messages": []})
    assert (call.provider, together.calls) == ("together_ai", 3)


async def test_retries_are_bounded_then_the_next_provider_answers():
    together, openai = ScriptedProvider("together_ai", down("together_ai")), ScriptedProvider("openai")
    call = await router_of(together, openai, max_retries=2).call("m", ROUTES, {"messages": []})
    assert (call.provider, call.upstream_model, together.calls, openai.calls) == ("openai", "gpt-4o-mini", 3, 1)


async def test_a_refused_request_is_neither_retried_nor_failed_over():
    together = ScriptedProvider("together_ai", [ProviderError("together_ai", "bad request", status=400)])
    openai = ScriptedProvider("openai")
    with pytest.raises(ProvidersFailed) as failed:
        await router_of(together, openai, max_retries=2).call("m", ROUTES, {"messages": []})
    assert (together.calls, openai.calls, len(failed.value.attempts)) == (1, 0, 1)


async def test_every_attempt_is_kept_when_no_provider_answers():
    together = ScriptedProvider("together_ai", [ProviderError("together_ai", "timed out", timeout=True)] * 3)
    openai = ScriptedProvider("openai", [ProviderError("openai", "timed out", timeout=True)] * 3)
    with pytest.raises(ProvidersFailed) as failed:
        await router_of(together, openai, max_retries=2).call("m", ROUTES, {"messages": []})
    assert [a.provider for a in failed.value.attempts] == ["together_ai"] * 3 + ["openai"] * 3
    assert failed.value.timed_out and failed.value.retry_after_s is None


def test_weighted_routes_come_first_in_proportion_to_their_weight_and_the_rest_follow():
    routes = [ModelRoute(provider="a", model="m", weight=3), ModelRoute(provider="b", model="m", weight=1)]
    draw = random.Random(7).random
    orders = [route_order(routes, "weighted", lambda provider: 0, draw) for _ in range(4000)]
    firsts = Counter(order[0].provider for order in orders)
    assert 2850 <= firsts["a"] <= 3150  # 3000 expected
    assert all(sorted(r.provider for r in order) == ["a", "b"] for order in orders)


def test_least_busy_puts_the_provider_with_fewest_calls_in_flight_first_ties_in_order():
    routes = [ModelRoute(provider=name, model="m") for name in ("a", "b", "c")]
    in_flight = {"a": 2, "b": 0, "c": 1}
    assert [r.provider for r in route_order(routes, "least_busy", in_flight.__getitem__)] == ["b", "c", "a"]
    assert [r.provider for r in route_order(routes, "least_busy", lambda p: 0)] == ["a", "b", "c"]
    assert route_order(routes, "fallback", in_flight.__getitem__) is routes


async def test_least_busy_counts_the_calls_in_flight_on_this_replica():
    a, b = ScriptedProvider("a"), ScriptedProvider("b")
    router = router_of(a, b)
    routes = [ModelRoute(provider="a", model="m"), ModelRoute(provider="b", model="m")]
    router.deployments["a"].in_flight = 3
    call = await router.call("m", routes, {}, strategy="least_busy")
    assert call.provider == "b" and router.deployments["b"].in_flight == 0  # released once answered


async def test_an_open_breaker_really_skips_its_provider_until_its_cooldown_ends():
    together, openai = ScriptedProvider("together_ai", down("together_ai", 100)), ScriptedProvider("openai")
    router = router_of(together, openai)
    for _ in range(5):
        await router.call("m", ROUTES, {})
    assert together.calls == 5  # the fifth failure opened the breaker
    for _ in range(3):
        assert (await router.call("m", ROUTES, {})).provider == "openai"
    assert together.calls == 5


async def test_a_provider_asking_for_time_is_held_that_long_and_the_call_fails_over_without_a_retry():
    together = ScriptedProvider("together_ai", [ProviderError("together_ai", "slow down", status=429,
                                                              retry_after_s=40)])
    openai = ScriptedProvider("openai")
    router = router_of(together, openai, max_retries=2)
    assert (await router.call("m", ROUTES, {})).provider == "openai"
    breaker = router.deployments["together_ai"].breaker
    assert together.calls == 1 and 39 < breaker.remaining_s() <= 40
    breaker.hold(5)  # a shorter Retry-After never shortens the cool-down
    assert 39 < breaker.remaining_s() <= 40


async def test_when_the_last_route_asks_for_time_the_call_waits_that_long():
    together = ScriptedProvider("together_ai", [ProviderError("together_ai", "slow down", status=429, retry_after_s=7)])
    openai = ScriptedProvider("openai", down("openai", 1))
    with pytest.raises(ProvidersFailed) as failed:
        await router_of(together).call("m", ROUTES[:1], {})
    assert failed.value.retry_after_s == 7
    with pytest.raises(ProvidersFailed) as failed:  # a failure that asks for nothing is not a wait
        await router_of(ScriptedProvider("together_ai", [ProviderError("together_ai", "x", status=429,
                                                                       retry_after_s=7)]), openai).call("m", ROUTES, {})
    assert failed.value.retry_after_s is None


async def test_a_deployment_over_its_ceiling_is_skipped_and_the_next_route_serves():
    together, openai = ScriptedProvider("together_ai"), ScriptedProvider("openai")
    minutes = Minutes()
    router = router_of(together, openai, ceilings=minutes, limits={"together_ai": (2, None)})
    served = [(await router.call("m", ROUTES, {}, tokens=10)).provider for _ in range(3)]
    assert served == ["together_ai", "together_ai", "openai"]
    assert minutes.counted == {"together_ai": 2}  # openai declares no ceiling: never asked


async def test_when_every_route_cools_down_the_call_waits_for_the_first_back():
    together, openai = ScriptedProvider("together_ai"), ScriptedProvider("openai", down("openai", 100))
    router = router_of(together, openai, ceilings=Minutes(wait_s=12.5), limits={"together_ai": (1, None)})
    await router.call("m", ROUTES, {})
    for _ in range(5):
        with pytest.raises(ProvidersFailed):
            await router.call("m", ROUTES[1:], {})
    with pytest.raises(ProvidersFailed) as failed:
        await router.call("m", ROUTES, {})
    assert not failed.value.attempts and failed.value.retry_after_s == 12.5  # the breaker has ~30 s left
    assert "together_ai: over its rpm/tpm ceiling, skipped" in str(failed.value)
    assert "openai: circuit open, skipped" in str(failed.value)


async def test_ceilings_that_cannot_be_checked_let_the_call_through():
    together = ScriptedProvider("together_ai")
    router = router_of(together, ceilings=Minutes(down=True), limits={"together_ai": (1, None)})
    assert [(await router.call("m", ROUTES[:1], {})).provider for _ in range(3)] == ["together_ai"] * 3
