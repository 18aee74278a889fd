"""Key expiry and rotation through the CLI, as the gateway sees them."""

from __future__ import annotations

import os
import subprocess
import sys

import asyncpg
import httpx
import pytest

from tests.conftest import unique
from tests.integration.helpers import auth, chat_body

pytestmark = pytest.mark.service


def keys(database_url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli", "keys", *args], capture_output=True, text=True,
                          env={**os.environ, "DATABASE_URL": database_url}, timeout=60)


async def status(gateway, key: str) -> tuple[int, str]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        answer = await client.post("/v1/chat/completions", json=chat_body(), headers=auth(key))
    return answer.status_code, answer.json().get("error", {}).get("message", "") if answer.status_code != 200 else ""


async def test_a_key_with_a_lifetime_works_until_it_expires(gateway, database_url):
    user = unique("exp")
    made = keys(database_url, "create", "--user", user, "--tier", "pro", "--expires-in", "30d")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    assert await status(gateway, key) == (200, "")
    listed = keys(database_url, "list", "--user", user).stdout
    assert "expires 20" in listed and key not in listed
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE user_id = $1", user)
    finally:
        await conn.close()
    assert await status(gateway, key) == (401, "API key expired")


async def test_rotation_keeps_the_old_key_for_its_grace_period_only(gateway, database_url):
    first = keys(database_url, "create", "--user", unique("rot"), "--tier", "pro").stdout.strip().splitlines()[-1]
    rotated = keys(database_url, "rotate", first, "--grace", "1h")
    assert rotated.returncode == 0, rotated.stderr
    second = rotated.stdout.strip().splitlines()[-1]
    assert second != first
    assert await status(gateway, first) == (200, "") and await status(gateway, second) == (200, "")
    third = keys(database_url, "rotate", second[:11], "--grace", "0s").stdout.strip().splitlines()[-1]
    assert await status(gateway, second) == (401, "API key expired")
    assert await status(gateway, third) == (200, "")
    assert keys(database_url, "rotate", "cw-nothing-like-this-key").returncode == 1
    assert "not a duration" in keys(database_url, "create", "--user", "x", "--tier", "pro",
                                    "--expires-in", "soon").stderr
