"""The response cache's request headers at the gateway's HTTP edge, served in process on a cache in
memory: every value that cannot be read is a 400 JSON error naming its header, and every
`Cache-Control` line counts."""

from __future__ import annotations

import pytest

from services.api.response_cache import ModelCachePolicy, ResponseCache
from tests.integration.helpers import CHEAP_MODEL, auth, chat_body
from tests.support.in_process import served
from tests.unit.api.fakes import MemoryStore
from tests.unit.api.in_process import FakePorts, in_process_api


@pytest.fixture
def ports() -> FakePorts:
    return FakePorts()


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
async def client(ports, store):
    cache = ResponseCache(store, {CHEAP_MODEL: ModelCachePolicy(600, False, 100_000)})
    async with served(in_process_api(ports, cache=cache), timeout=30,
                      headers=auth(ports.keys.add("ann", "pro"))) as c:
        yield c


@pytest.mark.parametrize(("header", "value"), [
    ("Cache-Control", "max-age=\u00b2"), ("X-Costwarden-Cache-TTL", "\u00b3"),  # Latin-1 superscript digits
    ("X-Costwarden-Cache-TTL", "0" * 5000), ("Cache-Control", "max-age=-" + "9" * 5000),
])
async def test_a_cache_header_that_cannot_be_read_is_a_400_naming_it(client, ports, header, value):
    response = await client.post("/v1/chat/completions", json=chat_body(), headers={header: value.encode("latin-1")})
    assert response.status_code == 400 and response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_cache_header", header)
    assert not ports.limiter.asked


async def test_a_max_age_of_more_digits_than_python_converts_reads_as_the_longest_age(client):
    response = await client.post("/v1/chat/completions", json=chat_body(),
                                 headers={"Cache-Control": "max-age=" + "9" * 5000})
    assert response.status_code == 200 and response.headers["X-Costwarden-Cache"] == "miss"


async def test_every_cache_control_line_counts(client, store):
    response = await client.post("/v1/chat/completions", json=chat_body(),
                                 headers=[("Cache-Control", "max-age=60"), ("Cache-Control", "no-store")])
    assert response.status_code == 200 and response.headers["X-Costwarden-Cache"] == "bypass"
    assert store.entries == {}
