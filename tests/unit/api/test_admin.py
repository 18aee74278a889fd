"""The admin API for keys (routers/admin.py), served in process on an in-memory key table and cost
service: create (the key shown once), list, read with the spend, revoke, each change audited; only
admin keys; wrong requests named. tests/integration/test_admin_keys.py does it on the real gateway."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.integration.helpers import auth, chat_body
from tests.support.in_process import served
from tests.unit.api.in_process import FakePorts, in_process_api


async def test_an_admin_creates_lists_reads_and_revokes_a_key():
    ports = FakePorts()
    admin = ports.keys.add("ops", "pro", admin=True)
    async with served(in_process_api(ports), headers=auth(admin)) as client:
        made = await client.post("/admin/keys", json={"user_id": "ann", "tier": "pro", "alias": "laptop",
                                                      "expires_in": "30d"})
        assert made.status_code == 201, made.text
        created = made.json()
        key, key_id = created["key"], created["id"]
        assert created["prefix"] == key[:11] and created["alias"] == "laptop" and created["expires_at"]
        assert (await client.post("/v1/chat/completions", json=chat_body(), headers=auth(key))).status_code == 200

        listed = (await client.get("/admin/keys", params={"user_id": "ann"})).json()["data"]
        assert [k["id"] for k in listed] == [key_id] and "key" not in listed[0]
        ports.spend.per_key[key_id], ports.spend.per_user["ann"] = Decimal("0.0012"), Decimal("0.5")
        detail = (await client.get(f"/admin/keys/{key_id}")).json()
        assert detail["user_id"] == "ann"
        assert detail["spend_usd"] == {"today": "0.0012", "this_month": "0.0012"}
        assert detail["user_spend_usd"] == {"today": "0.5", "this_month": "0.5"}

        revoked = await client.delete(f"/admin/keys/{key_id}")
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        assert (await client.post("/v1/chat/completions", json=chat_body(), headers=auth(key))).status_code == 401
        assert (await client.get("/admin/keys", params={"user_id": "ann", "revoked": "false"})).json()["data"] == []
        assert (await client.delete("/admin/keys/999999999")).json()["error"]["code"] == "not_found"
        assert (await client.get("/admin/keys/abc")).status_code == 404
    assert ports.keys.audit == [(key_id, "create", "admin-api:ops"), (key_id, "revoke", "admin-api:ops")]


async def test_a_key_is_shown_with_null_spend_while_the_cost_service_does_not_answer():
    ports = FakePorts()
    admin = ports.keys.add("ops", "pro", admin=True)
    ports.spend.unavailable = True
    async with served(in_process_api(ports), headers=auth(admin)) as client:
        detail = await client.get("/admin/keys/1")
    assert detail.status_code == 200 and detail.json()["user_id"] == "ops"
    assert detail.json()["spend_usd"] == {"today": None, "this_month": None}


@pytest.mark.parametrize(("body", "param"), [
    ({"user_id": "u", "tier": "platinum"}, "tier"), ({"user_id": "u", "tier": "anonymous"}, "tier"),
    ({"user_id": "u", "tier": "pro", "expires_in": "soon"}, "expires_in"), ({"tier": "pro"}, "user_id"),
    ({"user_id": "u", "tier": "pro", "owner": "x"}, "owner"),
])
async def test_a_wrong_request_is_a_400_naming_the_field(body, param):
    ports = FakePorts()
    admin = ports.keys.add("ops", "pro", admin=True)
    async with served(in_process_api(ports), headers=auth(admin)) as client:
        answer = await client.post("/admin/keys", json=body)
        listing = await client.get("/admin/keys", params={"revoked": "maybe"})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == param, answer.text
    assert listing.status_code == 400 and listing.json()["error"]["param"] == "revoked"
    assert ports.keys.audit == []


async def test_only_admin_keys_may_use_it():
    ports = FakePorts()
    plain = ports.keys.add("ann", "enterprise")
    async with served(in_process_api(ports)) as client:
        for method, path in (("POST", "/admin/keys"), ("GET", "/admin/keys"), ("GET", "/admin/keys/1"),
                             ("DELETE", "/admin/keys/1")):
            refused = await client.request(method, path, headers=auth(plain), json={"user_id": "u", "tier": "pro"})
            assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"
            anonymous = await client.request(method, path)
            assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"] == "Bearer"
    assert ports.keys.audit == [] and ports.keys.records[1].revoked_at is None
