"""Who is calling: an API key's user and tier, or an anonymous client IP behind trusted proxies. Pure
rules; keys are looked up through cached_key_store.py."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    user_id: str | None
    tier: str
    is_admin: bool = False
    key_id: int | None = None
    team_id: str | None = None  # its user's team: whose cached answers it shares

    @property
    def anonymous(self) -> bool:
        return self.user_id is None


ANONYMOUS = Caller(user_id=None, tier="anonymous")


class KeyStoreUnavailable(Exception):
    """The key store did not answer; for a key never seen before, the caller should retry shortly."""


class InvalidCredentials(Exception):
    """A wrong, revoked or expired key, or an Authorization header that is not a bearer token."""


def bearer_token(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidCredentials("Authorization header must be 'Bearer <api key>'")
    return token.strip()


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
