"""Bad input at the real gateway: a wrong key is a 401 from the real key store, bad input uses no quota
of the real limiter, and the CLI's keys work and stop working. The rest of the HTTP edge is tested in
process (tests/unit/api/test_http_edge.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from tests.conftest import unique, unique_ip
from tests.integration.helpers import auth, chat_body, from_ip

pytestmark = pytest.mark.service


@pytest.fixture
async def client(gateway):
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30, headers=from_ip(unique_ip())) as c:
        yield c


def error_of(response: httpx.Response) -> dict:
    assert response.headers["content-type"].startswith("application/json")
    return response.json()["error"]


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
