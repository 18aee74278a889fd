"""The database's migrations as files (migrations/, applied in name order by `costwarden migrate`,
services/deploy/migrate.py), and which of them a database has not applied yet (the health service's
startup probe asks)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import asyncpg

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    return [Migration(path.name, path.read_text()) for path in sorted(directory.glob("*.sql"))]


async def pending_migrations(database_url: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")} if exists else set()
    finally:
        await conn.close()
    return [m.name for m in load_migrations(directory) if m.name not in done]
