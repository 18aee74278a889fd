"""NKEY identities for the bus: one seed per role, and the nats-server authorization block that grants
each role's public key exactly its permissions (bus_permissions.py).

NKEYs rather than passwords: the server holds only public keys, and a client proves it holds its seed
by signing the server's challenge, so no secret crosses the wire or sits in the server's config.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import nkeys

from services.deploy.bus_permissions import PERMISSIONS, ROLES

AUTH_FILE = "auth.conf"


def seed_file(directory: Path, role: str) -> Path:
    return directory / f"{role}.nk"


def _public_key(directory: Path, role: str) -> str:
    """The role's public key, from its seed file; a new seed (readable by its owner only) if none."""
    path = seed_file(directory, role)
    if not path.exists():
        seed = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(seed + b"\n")
    key_pair = nkeys.from_seed(bytearray(path.read_bytes().strip()))
    return str(key_pair.public_key.decode())


def authorization(public_keys: dict[str, str]) -> dict:
    users = []
    for role in ROLES:
        permissions = PERMISSIONS[role]
        granted: dict = {"publish": {"allow": list(permissions.publish)},
                         "subscribe": {"allow": list(permissions.subscribe)}}
        if permissions.responds:
            granted["allow_responses"] = True
        users.append({"nkey": public_keys[role], "permissions": granted})
    return {"authorization": {"users": users}}


def write_nats_config(directory: Path) -> Path:
    """Write (or complete) `directory`: one `<role>.nk` seed per role, kept if it exists, and `auth.conf`
    for nats-server (`nats-server -c auth.conf`, or `include` it in your own configuration). Returns
    the path of auth.conf."""
    directory.mkdir(parents=True, exist_ok=True)
    public_keys = {role: _public_key(directory, role) for role in ROLES}
    path = directory / AUTH_FILE
    path.write_text("# costwarden's NATS identities: public keys and permissions only (costwarden nats-config)\n"
                    + json.dumps(authorization(public_keys), indent=2) + "\n")
    return path
