from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import pytest

from services.deploy.migrate import MigrationError, apply_migrations
from shared.migrations import pending_migrations
from tests.conftest import _with_database

pytestmark = pytest.mark.adapter


@pytest.fixture
async def scratch_url(pg_server_url):
    name = f"costwarden_mig_{uuid.uuid4().hex[:8]}"
    url = _with_database(pg_server_url, name)
    yield url
    conn = await asyncpg.connect(_with_database(pg_server_url, "postgres"))
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


def write(directory: Path, name: str, sql: str) -> None:
    (directory / name).write_text(sql)


async def test_migrations_apply_in_order_each_once_even_when_started_together(scratch_url, tmp_path):
    write(tmp_path, "0001_a.sql", "CREATE TABLE a (id int); SELECT pg_sleep(0.3);")
    write(tmp_path, "0002_b.sql", "CREATE TABLE b (a_id int); INSERT INTO a VALUES (1);")
    first, second = await asyncio.gather(apply_migrations(scratch_url, tmp_path), apply_migrations(scratch_url, tmp_path))
    assert sorted([first, second]) == [[], ["0001_a.sql", "0002_b.sql"]]
    assert await apply_migrations(scratch_url, tmp_path) == []
    conn = await asyncpg.connect(scratch_url)
    assert await conn.fetchval("SELECT count(*) FROM a") == 1
    await conn.close()


async def test_a_failed_migration_leaves_nothing_half_applied(scratch_url, tmp_path):
    write(tmp_path, "0001_ok.sql", "CREATE TABLE ok (id int);")
    write(tmp_path, "0002_bad.sql", "CREATE TABLE half (id int); SELECT no_such_function();")
    with pytest.raises(asyncpg.PostgresError):
        await apply_migrations(scratch_url, tmp_path)
    assert await pending_migrations(scratch_url, tmp_path) == ["0002_bad.sql"]
    conn = await asyncpg.connect(scratch_url)
    assert await conn.fetchval("SELECT to_regclass('half')") is None
    await conn.close()


async def test_editing_an_applied_migration_is_refused(scratch_url, tmp_path):
    write(tmp_path, "0001_a.sql", "CREATE TABLE a (id int);")
    await apply_migrations(scratch_url, tmp_path)
    write(tmp_path, "0001_a.sql", "CREATE TABLE a (id bigint);")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await apply_migrations(scratch_url, tmp_path)


async def test_the_project_migrations_create_the_tables(database_url):
    conn = await asyncpg.connect(database_url)
    tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
    await conn.close()
    assert {"api_keys", "rate_limit_violations", "schema_migrations"} <= tables
