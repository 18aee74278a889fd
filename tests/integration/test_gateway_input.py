"""Bad input at the gateway: precise 4xx JSON errors, nothing reaches the limiter or a provider."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from tests.conftest import unique, unique_ip
from tests.integration.helpers import CHEAP_MODEL, auth, chat_body, from_ip

pytestmark = pytest.mark.service


@pytest.fixture
async def client(gateway):
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30, headers=from_ip(unique_ip())) as c:
        yield c


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


async def test_wrong_key_is_401_and_malformed_authorization_too(client):
    response = await client.post("/v1/chat/completions", json=chat_body(), headers=auth("cw_not-a-real-key"))
    assert response.status_code == 401
    assert error_of(response)["code"] == "invalid_api_key"
    assert "cw_not-a-real-key" not in response.text
    response = await client.post("/v1/chat/completions", json=chat_body(), headers={"Authorization": "Basic abc"})
    assert response.status_code == 401


async def test_bad_input_does_not_use_quota(client):
    for _ in range(5):
        await client.post("/api/agent/query", json={"query": ""})
    ok = await client.post("/api/agent/query", json={"query": "fine"})
    assert ok.status_code == 200 and ok.headers["RateLimit"].startswith('"anonymous";r=2;')


async def test_keys_cli_creates_a_working_key_and_revokes_it(gateway, base_env, db):
    user = unique("cli")
    env = {**os.environ, **base_env}
    created = subprocess.run([sys.executable, "-m", "services.cli", "keys", "create", "--user", user, "--tier", "pro"],
                             env=env, capture_output=True, text=True, check=True)
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("cw_") and len(key) > 40
    stored = await db.fetchrow("SELECT key_hash, key_prefix, tier FROM api_keys WHERE user_id = $1", user)
    assert stored["tier"] == "pro" and key not in stored["key_hash"] and key.startswith(stored["key_prefix"])

    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        allowed = await client.post("/v1/chat/completions", json=chat_body(), headers=auth(key))
        assert allowed.status_code == 200 and allowed.headers["RateLimit-Policy"] == '"pro";q=100;w=3600'
        subprocess.run([sys.executable, "-m", "services.cli", "keys", "revoke", key],
                       env=env, check=True, capture_output=True)
        revoked = await client.post("/v1/chat/completions", json=chat_body(), headers=auth(key))
    assert revoked.status_code == 401


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
