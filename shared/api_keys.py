"""API keys as the api (which issues and checks them) and the console (which signs people in with
them) both know them: `cw_` and 43 random characters, stored only as a SHA-256, and a key's record as
an administrator sees it."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

KEY_PREFIX = "cw_"
DISPLAY_PREFIX_LEN = len(KEY_PREFIX) + 8


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """Keys are long random strings, so a fast hash is enough (no dictionary to guard against)."""
    return hashlib.sha256(key.encode()).hexdigest()


def display_prefix(key: str) -> str:
    return key[:DISPLAY_PREFIX_LEN]


# The columns of `api_keys` that make a KeyRecord, in its order.
KEY_COLUMNS = ("id, key_prefix, user_id, tier, is_admin, label, created_at, last_used_at, expires_at, revoked_at,"
               " team_id")


@dataclass(frozen=True)
class KeyRecord:
    """A key as an administrator sees it: never the key itself, only its displayed prefix."""

    id: int
    prefix: str
    user_id: str
    tier: str
    admin: bool
    alias: str | None
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    team_id: str | None = None  # its user's team

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> KeyRecord:
        """From a row of KEY_COLUMNS."""
        return cls(row["id"], row["key_prefix"], row["user_id"], row["tier"], row["is_admin"], row["label"],
                   row["created_at"], row["last_used_at"], row["expires_at"], row["revoked_at"], row["team_id"])

    def active(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def as_json(self) -> dict[str, Any]:
        return {name: value.isoformat() if isinstance(value, datetime) else value
                for name, value in asdict(self).items()}
