"""What administering API keys means, apart from where keys are kept: the port the admin API uses, and
how a key's lifetime is written (`30d`, `12h`)."""

from __future__ import annotations

from datetime import timedelta
from typing import Protocol

from shared.api_keys import KeyRecord

LIFETIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_lifetime(text: str) -> timedelta:
    """A key lifetime or grace period: a whole number and a unit, s, m, h or d (`30d`, `12h`)."""
    number, unit = text[:-1], text[-1:]
    if unit not in LIFETIME_UNITS or not number.isdigit():
        raise ValueError(f"{text!r} is not a duration like 30d, 12h, 45m or 90s")
    return timedelta(seconds=int(number) * LIFETIME_UNITS[unit])


class KeyAdmin(Protocol):
    """Creating, listing, reading and revoking keys; every change audited under `actor`."""

    async def create(self, user_id: str, tier: str, actor: str, is_admin: bool, alias: str | None,
                     expires_in: timedelta | None) -> tuple[KeyRecord, str]:
        """(its record, the key): the key is shown once and only its hash is kept."""
        ...

    async def list(self, user_id: str | None, tier: str | None, revoked: bool | None) -> list[KeyRecord]: ...

    async def get(self, key_id: int) -> KeyRecord | None: ...

    async def revoke(self, key_id: int, actor: str) -> KeyRecord | None: ...
