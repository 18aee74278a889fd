"""Who is calling: API keys (stored hashed) mapped to a user and tier, or an anonymous client IP."""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

KEY_PREFIX = "cw_"
DISPLAY_PREFIX_LEN = len(KEY_PREFIX) + 8


@dataclass(frozen=True)
class Caller:
    user_id: str | None
    tier: str
    is_admin: bool = False

    @property
    def anonymous(self) -> bool:
        return self.user_id is None


ANONYMOUS = Caller(user_id=None, tier="anonymous")


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """Keys are long random strings, so a fast hash is enough (no dictionary to guard against)."""
    return hashlib.sha256(key.encode()).hexdigest()


def display_prefix(key: str) -> str:
    return key[:DISPLAY_PREFIX_LEN]


class InvalidCredentials(Exception):
    pass


def bearer_token(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidCredentials("Authorization header must be 'Bearer <api key>'")
    return token.strip()


class PgApiKeyStore:
    """Looks keys up by hash, remembering answers for a short time so that the hot path rarely
    touches Postgres. A revoked key stops working within `cache_s` seconds."""

    def __init__(self, pool: asyncpg.Pool, cache_s: float) -> None:
        self.pool = pool
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, Caller | None]] = {}

    async def caller_for(self, key: str) -> Caller:
        digest = hash_api_key(key)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is None or hit[0] < now:
            row = await self.pool.fetchrow(
                "SELECT user_id, tier, is_admin FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", digest
            )
            caller = Caller(row["user_id"], row["tier"], row["is_admin"]) if row else None
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[digest] = (now + self.cache_s, caller)
            hit = self._cache[digest]
        if hit[1] is None:
            raise InvalidCredentials("Invalid API key")
        return hit[1]


async def create_key(conn: asyncpg.Connection, user_id: str, tier: str, is_admin: bool = False,
                     label: str | None = None) -> str:
    key = new_api_key()
    await conn.execute(
        "INSERT INTO api_keys (key_hash, key_prefix, user_id, tier, is_admin, label) VALUES ($1, $2, $3, $4, $5, $6)",
        hash_api_key(key), display_prefix(key), user_id, tier, is_admin, label,
    )
    return key


async def revoke_key(conn: asyncpg.Connection, key_or_prefix: str) -> int:
    """Revoke by full key, or by the displayed prefix when it names exactly one active key."""
    if len(key_or_prefix) > DISPLAY_PREFIX_LEN:
        result = await conn.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE key_hash = $1 AND revoked_at IS NULL",
            hash_api_key(key_or_prefix),
        )
        return int(result.split()[-1])
    rows = await conn.fetch("SELECT id FROM api_keys WHERE key_prefix = $1 AND revoked_at IS NULL", key_or_prefix)
    if len(rows) != 1:
        return 0 if not rows else -len(rows)
    await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1", rows[0]["id"])
    return 1


def parse_networks(entries: Sequence[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(entry, strict=False) for entry in entries]


def client_ip(peer: str | None, forwarded_for: str | None,
              trusted: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str:
    """The client's address. X-Forwarded-For counts only when the peer is a trusted proxy; then the
    rightmost address that is not itself a trusted proxy is the client."""

    def is_trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in trusted)

    peer = peer or "unknown"
    if not forwarded_for or not is_trusted(peer):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer
    return hops[0] if hops else peer
