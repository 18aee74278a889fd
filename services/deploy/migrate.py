"""Plain-SQL migrations: files in migrations/ applied in name order, each once, under an advisory lock.

Several replicas may start at once; the advisory lock makes the others wait while one applies the
files, after which they find nothing left to do. An applied file whose text has changed is an error:
write a new migration instead of editing an old one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from shared.migrations import MIGRATIONS_DIR, load_migrations

log = logging.getLogger(__name__)

LOCK_KEY = 0x636F_7374_7761  # "costwa"


class MigrationError(RuntimeError):
    pass


async def ensure_database(database_url: str) -> None:
    """Create the database named in the URL if the server does not have it yet."""
    try:
        conn = await asyncpg.connect(database_url)
    except asyncpg.InvalidCatalogNameError:
        parts = urlsplit(database_url)
        name = parts.path.lstrip("/")
        admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):  # another replica won the race
            pass
        finally:
            await admin.close()
        log.info("created database %s", name)
    else:
        await conn.close()


async def apply_migrations(database_url: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every pending migration; return the names applied by this call."""
    await ensure_database(database_url)
    conn = await asyncpg.connect(database_url)
    applied_now: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       name text PRIMARY KEY,
                       checksum text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = {r["name"]: r["checksum"] for r in await conn.fetch("SELECT name, checksum FROM schema_migrations")}
            for migration in load_migrations(directory):
                if migration.name in done:
                    if done[migration.name] != migration.checksum:
                        raise MigrationError(f"{migration.name} changed after it was applied")
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)",
                        migration.name, migration.checksum,
                    )
                applied_now.append(migration.name)
                log.info("applied migration %s", migration.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    finally:
        await conn.close()
    return applied_now
