"""Key administration in Postgres (`api_keys`, `api_key_audit`): every change writes an audit row (who,
what, when) in the same transaction. The functions work on one connection (the CLI, `make run`);
PgKeyAdmin is the admin API's KeyAdmin port over a pool."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from shared.api_keys import DISPLAY_PREFIX_LEN, KEY_COLUMNS, KeyRecord, display_prefix, hash_api_key, new_api_key
from shared.events import utc_now


async def audit(conn: asyncpg.Connection, key_id: int, action: str, actor: str) -> None:
    await conn.execute("INSERT INTO api_key_audit (key_id, action, actor) VALUES ($1, $2, $3)", key_id, action, actor)


async def create_key(conn: asyncpg.Connection, user_id: str, tier: str, *, actor: str, is_admin: bool = False,
                     label: str | None = None, expires_in: timedelta | None = None) -> tuple[KeyRecord, str]:
    """(its record, the key): the key is shown once and only its hash is stored."""
    key = new_api_key()
    async with conn.transaction():
        row = await conn.fetchrow(
            "INSERT INTO api_keys (key_hash, key_prefix, user_id, tier, is_admin, label, expires_at)"
            f" VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {KEY_COLUMNS}",
            hash_api_key(key), display_prefix(key), user_id, tier, is_admin, label,
            utc_now() + expires_in if expires_in else None)
        await audit(conn, row["id"], "create", actor)
    return KeyRecord.from_row(row), key


async def active_key_id(conn: asyncpg.Connection, key_or_prefix: str) -> int:
    """The id of the active key given in full, or by a displayed prefix that names exactly one; 0 when
    none matches, -n when n keys share the prefix."""
    if len(key_or_prefix) > DISPLAY_PREFIX_LEN:
        rows = await conn.fetch("SELECT id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
                                hash_api_key(key_or_prefix))
    else:
        rows = await conn.fetch("SELECT id FROM api_keys WHERE key_prefix = $1 AND revoked_at IS NULL", key_or_prefix)
    return int(rows[0]["id"]) if len(rows) == 1 else -len(rows)


async def revoke_key(conn: asyncpg.Connection, key_id: int, actor: str) -> KeyRecord | None:
    """Revoke (once: revoking a revoked key changes nothing); None when there is no such key. The gateway
    stops accepting it within its key cache's lifetime."""
    async with conn.transaction():
        row = await conn.fetchrow(f"UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL"
                                  f" RETURNING {KEY_COLUMNS}", key_id)
        if row is not None:
            await audit(conn, key_id, "revoke", actor)
            return KeyRecord.from_row(row)
    return await get_key(conn, key_id)


async def rotate_key(conn: asyncpg.Connection, key_id: int, grace: timedelta, actor: str) -> str:
    """A new key for the same user, tier, rights and label (and the same remaining lifetime, if any);
    the old key keeps working for `grace`, then expires."""
    async with conn.transaction():
        old = await conn.fetchrow("SELECT user_id, tier, is_admin, label, expires_at FROM api_keys WHERE id = $1"
                                  " FOR UPDATE", key_id)
        now = utc_now()
        _, key = await create_key(conn, old["user_id"], old["tier"], actor=actor, is_admin=old["is_admin"],
                                  label=old["label"], expires_in=old["expires_at"] - now if old["expires_at"] else None)
        await conn.execute("UPDATE api_keys SET expires_at = least(coalesce(expires_at, $2), $2) WHERE id = $1",
                           key_id, now + grace)
        await audit(conn, key_id, "rotate", actor)
    return key


async def get_key(conn: asyncpg.Connection, key_id: int) -> KeyRecord | None:
    row = await conn.fetchrow(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1", key_id)
    return KeyRecord.from_row(row) if row else None


async def list_keys(conn: asyncpg.Connection, user_id: str | None = None, tier: str | None = None,
                    revoked: bool | None = None) -> list[KeyRecord]:
    rows = await conn.fetch(
        f"SELECT {KEY_COLUMNS} FROM api_keys WHERE ($1::text IS NULL OR user_id = $1)"
        " AND ($2::text IS NULL OR tier = $2) AND ($3::boolean IS NULL OR (revoked_at IS NOT NULL) = $3)"
        " ORDER BY created_at, id", user_id, tier, revoked)
    return [KeyRecord.from_row(row) for row in rows]


class PgKeyAdmin:
    """The KeyAdmin port (services/keys/key_admin.py), over the functions above."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def create(self, user_id: str, tier: str, actor: str, is_admin: bool, alias: str | None,
                     expires_in: timedelta | None) -> tuple[KeyRecord, str]:
        async with self.pool.acquire() as conn:
            return await create_key(conn, user_id, tier, actor=actor, is_admin=is_admin, label=alias,
                                    expires_in=expires_in)

    async def list(self, user_id: str | None, tier: str | None, revoked: bool | None) -> list[KeyRecord]:
        async with self.pool.acquire() as conn:
            return await list_keys(conn, user_id, tier, revoked)

    async def get(self, key_id: int) -> KeyRecord | None:
        async with self.pool.acquire() as conn:
            return await get_key(conn, key_id)

    async def revoke(self, key_id: int, actor: str) -> KeyRecord | None:
        async with self.pool.acquire() as conn:
            return await revoke_key(conn, key_id, actor)
