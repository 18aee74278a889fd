"""Bad input at the gateway's HTTP edge, served in process (no server): precise 4xx JSON errors, and
nothing reaches the limiter or a provider. What needs the real key store and limiter is in
tests/integration/test_gateway_input.py."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import unique_ip
from tests.integration.helpers import CHEAP_MODEL, chat_body, from_ip
from tests.support.in_process import served
from tests.unit.api.in_process import FakePorts, in_process_api


@pytest.fixture
async def ports() -> FakePorts:
    return FakePorts()


@pytest.fixture
async def client(ports):
    async with served(in_process_api(ports), timeout=30, headers=from_ip(unique_ip())) as c:
        yield c
    assert not ports.limiter.asked and not any(p.calls for p in ports.providers.values())


def error_of(response: httpx.Response) -> dict:
    assert response.headers["content-type"].startswith("application/json")
    return response.json()["error"]


async def test_malformed_json(client):
    response = await client.post("/v1/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_json"
    assert error_of(response)["message"].startswith("malformed JSON body")


async def test_body_that_is_not_an_object(client):
    response = await client.post("/v1/chat/completions", json=[1, 2])
    assert response.status_code == 400 and error_of(response)["code"] == "invalid_json"


async def test_unknown_model_is_404_model_not_found(client):
    response = await client.post("/v1/chat/completions", json=chat_body(model="no-such-model"))
    assert response.status_code == 404
    error = error_of(response)
    assert (error["code"], error["param"]) == ("model_not_found", "model")


@pytest.mark.parametrize("max_tokens", [-5, 0, 10_000_000])
async def test_negative_zero_or_absurd_max_tokens(client, max_tokens):
    response = await client.post("/v1/chat/completions", json=chat_body(max_tokens=max_tokens))
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == "max_tokens" and "between 1 and 32768" in error["message"]


async def test_missing_messages_names_the_field(client):
    response = await client.post("/v1/chat/completions", json={"model": CHEAP_MODEL})
    assert response.status_code == 400 and error_of(response)["param"] == "messages"


async def test_wrong_message_role(client):
    body = chat_body()
    body["messages"][0]["role"] = "wizard"
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400 and error_of(response)["param"] == "messages.0.role"


async def test_oversized_body_is_413(client):
    body = chat_body()
    body["messages"][0]["content"] = "x" * 1_100_000
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 413 and error_of(response)["code"] == "body_too_large"


async def test_agent_query_rejects_unknown_fields_and_empty_query(client):
    assert (await client.post("/api/agent/query", json={"query": ""})).status_code == 400
    response = await client.post("/api/agent/query", json={"query": "q", "temperature": 9})
    assert response.status_code == 400 and error_of(response)["param"] == "temperature"


async def test_bad_tags_header(client):
    response = await client.post("/v1/chat/completions", json=chat_body(), headers={"X-Costwarden-Tags": "no pairs"})
    assert response.status_code == 400 and error_of(response)["code"] == "invalid_tags"


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("GET", "/v1/nothing-here", 404, "not_found"), ("POST", "/api/agent/unknown", 404, "not_found"),
    ("GET", "/v1/chat/completions", 405, "method_not_allowed"), ("DELETE", "/v1/models", 405, "method_not_allowed"),
])
async def test_unknown_routes_and_methods_answer_in_the_gateways_error_format(client, method, path, status, code):
    response = await client.request(method, path)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error" and path in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


async def test_the_openapi_document_is_served_and_no_page_needs_a_cdn(client):
    document = (await client.get("/openapi.json")).json()
    assert "/v1/chat/completions" in document["paths"]
    for page in ("/docs", "/redoc"):
        response = await client.get(page)
        assert response.status_code == 404 and "cdn" not in response.text.lower()
