"""The api's Redis clients: made only for what asks Redis (cached models, deployments' ceilings), the
cache on its own Redis when CACHE_REDIS_URL names one. No command is sent: clients connect on first use."""

from __future__ import annotations

from services.api.app import redis_adapters
from services.api.response_cache import ModelCachePolicy
from services.api.settings import ApiSettings

POLICIES = {"gpt-4o-mini": ModelCachePolicy(ttl_s=60, shared=False, max_entry_bytes=1024)}


def settings(**values: object) -> ApiSettings:
    return ApiSettings(_env_file=None, costwarden_config=None, redis_url="redis://127.0.0.1:1/0", **values)


async def test_no_client_without_a_cached_model_or_a_ceiling():
    assert redis_adapters(settings(), {}, False) == ([], None, None)


async def test_one_client_for_the_ceilings_and_the_cache_unless_the_cache_has_its_own():
    made = []
    for cache_redis_url in (None, "redis://127.0.0.1:2/0"):
        clients, cache, ceilings = redis_adapters(settings(cache_redis_url=cache_redis_url), POLICIES, True)
        assert cache is not None and ceilings is not None
        assert ceilings._admit.registered_client is clients[0]
        assert cache.entries.redis is clients[-1]  # type: ignore[attr-defined]
        assert len(clients) == (1 if cache_redis_url is None else 2)
        made += clients
    clients, cache, ceilings = redis_adapters(settings(), {}, True)
    assert len(clients) == 1 and cache is None and ceilings is not None
    for client in made + clients:
        await client.aclose()
