"""The admin API for keys on the real gateway: create (the key shown once), list, read, revoke; a
non-admin key is refused; every change is an audit row; the CLI writes through the same code."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal

import asyncpg
import httpx
import pytest

from tests.conftest import unique
from tests.integration.helpers import auth, chat_body, new_key
from tests.support.polling import eventually


@pytest.mark.service
async def test_an_admin_creates_lists_reads_and_revokes_a_key(gateway, cost_service, database_url):
    admin_user = unique("admin")
    admin = await new_key(database_url, admin_user, "pro", admin=True)
    user = unique("managed")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30, headers=auth(admin)) as client:
        made = await client.post("/admin/keys", json={"user_id": user, "tier": "pro", "alias": "laptop",
                                                      "expires_in": "30d"})
        assert made.status_code == 201, made.text
        created = made.json()
        key, key_id = created["key"], created["id"]
        assert created["prefix"] == key[:11] and created["alias"] == "laptop" and created["expires_at"]
        assert (await client.post("/v1/chat/completions", json=chat_body(), headers=auth(key))).status_code == 200

        listed = (await client.get("/admin/keys", params={"user_id": user})).json()["data"]
        assert [k["id"] for k in listed] == [key_id] and "key" not in listed[0]
        async def key_spend_recorded() -> dict:
            detail = (await client.get(f"/admin/keys/{key_id}")).json()
            return detail if detail["spend_usd"]["today"] not in (None, "0") else {}

        detail = await eventually(key_spend_recorded, 30)
        assert detail["user_id"] == user and detail["last_used_at"] is not None
        conn = await asyncpg.connect(database_url)
        try:
            recorded = await conn.fetchval("SELECT sum(cost) FROM llm_usage WHERE api_key_id = $1", key_id)
        finally:
            await conn.close()
        assert Decimal(detail["spend_usd"]["today"]) == recorded > 0  # the key's own calls
        assert Decimal(detail["user_spend_usd"]["this_month"]) >= recorded

        revoked = await client.delete(f"/admin/keys/{key_id}")
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        assert (await client.post("/v1/chat/completions", json=chat_body(), headers=auth(key))).status_code == 401
        assert (await client.get("/admin/keys", params={"user_id": user, "revoked": "false"})).json()["data"] == []
        assert (await client.delete("/admin/keys/999999999")).json()["error"]["code"] == "not_found"
    conn = await asyncpg.connect(database_url)
    try:
        audit = await conn.fetch("SELECT action, actor FROM api_key_audit WHERE key_id = $1 ORDER BY at, id", key_id)
    finally:
        await conn.close()
    assert [(a["action"], a["actor"]) for a in audit] == [("create", f"admin-api:{admin_user}"),
                                                          ("revoke", f"admin-api:{admin_user}")]


@pytest.mark.service
@pytest.mark.parametrize(("body", "param"), [
    ({"user_id": "u", "tier": "platinum"}, "tier"), ({"user_id": "u", "tier": "anonymous"}, "tier"),
    ({"user_id": "u", "tier": "pro", "expires_in": "soon"}, "expires_in"), ({"tier": "pro"}, "user_id"),
    ({"user_id": "u", "tier": "pro", "owner": "x"}, "owner"),
])
async def test_a_wrong_request_is_a_400_naming_the_field(gateway, database_url, body, param):
    admin = await new_key(database_url, unique("admin"), "pro", admin=True)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30, headers=auth(admin)) as client:
        answer = await client.post("/admin/keys", json=body)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == param, answer.text


@pytest.mark.service
async def test_only_admin_keys_may_use_it(gateway, database_url):
    plain = await new_key(database_url, unique("plain"), "enterprise")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        for method, path in (("POST", "/admin/keys"), ("GET", "/admin/keys"), ("GET", "/admin/keys/1"),
                             ("DELETE", "/admin/keys/1")):
            refused = await client.request(method, path, headers=auth(plain), json={"user_id": "u", "tier": "pro"})
            assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"
            anonymous = await client.request(method, path)
            assert anonymous.status_code == 401


@pytest.mark.adapter
def test_the_cli_audits_its_changes_too(database_url):
    env = {**os.environ, "DATABASE_URL": database_url}
    user = unique("cli")
    made = subprocess.run([sys.executable, "-m", "services.cli", "keys", "create", "--user", user, "--tier", "free"],
                          env=env, capture_output=True, text=True, check=True)
    key = made.stdout.strip().splitlines()[-1]
    subprocess.run([sys.executable, "-m", "services.cli", "keys", "revoke", key], env=env, check=True,
                   capture_output=True)
    listed = subprocess.run([sys.executable, "-m", "services.cli", "keys", "list", "--user", user], env=env,
                            capture_output=True, text=True, check=True).stdout
    assert "revoked" in listed and key not in listed
    audit = subprocess.run(["psql", database_url, "-Atc", "SELECT a.action || ' ' || a.actor FROM api_key_audit a"
                            f" JOIN api_keys k ON k.id = a.key_id WHERE k.user_id = '{user}' ORDER BY a.id"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert audit[0] == "create" and audit[1].startswith("cli:") and audit[2] == "revoke"
