"""The API key format, a contract between the api (which issues and checks keys) and the console
(which signs people in with them): `cw_` and 43 random characters, stored only as a SHA-256."""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "cw_"
DISPLAY_PREFIX_LEN = len(KEY_PREFIX) + 8


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """Keys are long random strings, so a fast hash is enough (no dictionary to guard against)."""
    return hashlib.sha256(key.encode()).hexdigest()


def display_prefix(key: str) -> str:
    return key[:DISPLAY_PREFIX_LEN]
