"""Who is calling: API keys (stored hashed) mapped to a user and tier, or an anonymous client IP.
Pure rules; the key store is a port (PgApiKeyStore is its adapter)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from shared.api_keys import KeyRecord


@dataclass(frozen=True)
class Caller:
    user_id: str | None
    tier: str
    is_admin: bool = False
    key_id: int | None = None

    @property
    def anonymous(self) -> bool:
        return self.user_id is None


ANONYMOUS = Caller(user_id=None, tier="anonymous")


LIFETIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_lifetime(text: str) -> timedelta:
    """A key lifetime or grace period: a whole number and a unit, s, m, h or d (`30d`, `12h`)."""
    number, unit = text[:-1], text[-1:]
    if unit not in LIFETIME_UNITS or not number.isdigit():
        raise ValueError(f"{text!r} is not a duration like 30d, 12h, 45m or 90s")
    return timedelta(seconds=int(number) * LIFETIME_UNITS[unit])


class KeyStoreUnavailable(Exception):
    """The key store did not answer, and the key was never seen: the caller should retry shortly."""


class InvalidCredentials(Exception):
    pass


def bearer_token(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidCredentials("Authorization header must be 'Bearer <api key>'")
    return token.strip()


class KeyAdmin(Protocol):
    """Creating, listing, reading and revoking keys; every change audited under `actor`."""

    async def create(self, user_id: str, tier: str, actor: str, is_admin: bool, alias: str | None,
                     expires_in: timedelta | None, team_id: str | None = None) -> tuple[KeyRecord, str]:
        """The key is in its user's team; `team_id`, when given, must be it (ValueError otherwise)."""
        ...

    async def list(self, user_id: str | None, tier: str | None, revoked: bool | None,
                   team_id: str | None = None) -> list[KeyRecord]: ...

    async def get(self, key_id: int) -> KeyRecord | None: ...

    async def revoke(self, key_id: int, actor: str) -> KeyRecord | None: ...


class ApiKeyStore(Protocol):
    async def caller_for(self, key: str) -> Caller:
        """The caller an API key stands for; InvalidCredentials for a wrong or revoked key."""
        ...


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
