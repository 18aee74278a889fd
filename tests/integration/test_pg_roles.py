"""PostgreSQL roles (migration 0007): each service, logged in as a member of its role, does its work
through its own adapter and is refused a write (or, for health, a read) it must not make."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from services.api.cached_key_store import CachedKeyStore
from services.api.pg_api_key_store import PgApiKeyStore
from services.backup.pg_backup_log import PgBackupLog
from services.console.console import DIMENSIONS, ORDERS
from services.console.periods import preset
from services.console.pg_console_store import PgConsoleStore
from services.cost.pg_scope_limits import PgScopeLimits
from services.cost.pg_usage_ledger import PgUsageLedger
from services.cost.recorder import CostRecorder
from services.keys.pg_key_admin import create_key
from services.limiter.pg_limits_source import PgLimitsSource
from services.limiter.pg_violation_log import PgViolationLog
from services.limiter.scopes import SpendAsk
from services.notifier.pg_delivery_log import PgDeliveryLog
from shared.api_keys import hash_api_key
from shared.events import Alert, LimitViolation, LlmCompleted
from shared.limits import Budget, ScopeLimits
from shared.migrations import pending_migrations
from shared.policy import Thresholds
from shared.pricing import PriceCatalog
from tests.conftest import unique

pytestmark = pytest.mark.adapter


def as_login(database_url: str, login: str) -> str:
    parts = urlsplit(database_url)
    return urlunsplit(parts._replace(netloc=f"{login}@{parts.hostname}:{parts.port or 5432}"))


@pytest.fixture
async def login_as(fresh_database) -> AsyncIterator:
    """login_as("cost") -> the DATABASE_URL of a new login role that is a member of costwarden_cost."""
    owner = await asyncpg.connect(fresh_database)
    made: list[str] = []

    async def login(service: str) -> str:
        name = f"cw_test_{service}_{uuid.uuid4().hex[:8]}"
        await owner.execute(f"CREATE ROLE {name} LOGIN IN ROLE costwarden_{service}")
        made.append(name)
        return as_login(fresh_database, name)

    yield login
    for name in made:
        await owner.execute(f"DROP ROLE {name}")
    await owner.close()


async def refused(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(sql)
    finally:
        await conn.close()


async def test_api_reads_keys_and_cannot_change_their_user_tier_or_rights(login_as, fresh_database):
    owner = await asyncpg.connect(fresh_database)
    _, key = await create_key(owner, "ann", "pro", actor="test")
    await owner.close()
    url = await login_as("api")
    async with asyncpg.create_pool(url, min_size=1, max_size=1) as pool:
        assert (await CachedKeyStore(PgApiKeyStore(pool), cache_s=0).caller_for(key)).user_id == "ann"
    await refused(url, "UPDATE api_keys SET tier = 'enterprise'")


async def test_limiter_records_violations_and_reads_the_limits_only(login_as):
    url = await login_as("limiter")
    async with asyncpg.create_pool(url, min_size=1, max_size=1) as pool:
        await PgViolationLog(pool).store([LimitViolation(request_id=unique("r"), user_id="ann", tier="free",
                                                         endpoint="/v1/chat/completions", policy="standard",
                                                         limited_by="requests", limit=10, window_s=3600)])
        limits = PgLimitsSource(pool)
        await limits.load()
        now = datetime.now(UTC)
        assert await limits.spend([SpendAsk("team", "t", now - timedelta(days=1), now)]) == [{}]
    await refused(url, "DELETE FROM api_keys")
    await refused(url, "SELECT key_hash FROM api_keys")
    await refused(url, "DELETE FROM scope_limits")


async def test_cost_keeps_the_ledger_and_its_partitions_without_owning_anything(login_as):
    url = await login_as("cost")
    far = datetime(2031, 5, 1, tzinfo=UTC)  # a month with no partition yet: created through the definer function

    async def ignore(alert: Alert) -> None: ...

    async with asyncpg.create_pool(url, min_size=1, max_size=2) as pool:
        ledger = PgUsageLedger(pool)
        event = LlmCompleted(request_id=unique("c"), user_id="ann", provider="together_ai", model="gpt-4o-mini",
                             endpoint="/v1/chat/completions", prompt_tokens=10, completion_tokens=5, success=True,
                             latency_ms=3, occurred_at=far, team_id=(team := unique("t")), api_key_id=1)
        watched = {("team", team): ScopeLimits(budgets=(Budget(usd=Decimal("0.000001"), period="day"),),
                                              soft=(Decimal("0.5"),))}
        await CostRecorder(ledger, PriceCatalog.with_overrides({}), Thresholds(), ignore, clock=lambda: far,
                           limits=lambda: watched).record([event])
        assert await pool.fetchval("SELECT count(*) FROM llm_usage WHERE request_id = $1", event.request_id) == 1
        assert await pool.fetchval("SELECT count(*) FROM scope_spend WHERE scope = 'team' AND scope_id = $1",
                                   team) == 1
        assert await pool.fetchval("SELECT count(*) FROM cost_alerts WHERE scope = $1", f"team:{team}") == 1
        assert isinstance(await PgScopeLimits(pool).load(), dict)  # it may read them
        assert await ledger.cleanup(retention_days=36500) == []
    await refused(url, "INSERT INTO api_keys (key_hash, key_prefix, user_id, tier) VALUES ('h', 'p', 'u', 'pro')")


async def test_notifier_keeps_its_deliveries_only(login_as):
    url = await login_as("notifier")
    alert = Alert(key=unique("cost:all:hour"), source="cost", severity="warning", title="t", text="x",
                  threshold=Decimal(1), actual=Decimal(2))
    async with asyncpg.create_pool(url, min_size=1, max_size=1) as pool:
        log = PgDeliveryLog(pool, lease=timedelta(seconds=30), repeat_interval=timedelta(hours=4))
        assert await log.claim(alert.key, "slack") == "claimed"
        await log.record([alert], "slack", 1, "sent", None)
        await log.finish([alert], "slack", "sent")
        assert await log.channels_that_got(alert.key) == ["slack"]
    await refused(url, "INSERT INTO llm_usage_ids (request_id, created_at) VALUES ('x', now())")


async def test_health_only_connects_and_reads_the_applied_migrations(login_as):
    url = await login_as("health")
    assert await pending_migrations(url) == []
    await refused(url, "SELECT key_hash FROM api_keys")


async def test_backup_reads_everything_it_dumps_and_writes_its_log_only(login_as):
    url = await login_as("backup")
    dump = subprocess.run(["pg_dump", "--format=custom", "--dbname", url], capture_output=True,
                          env={**os.environ, "PGCONNECT_TIMEOUT": "10"})
    assert dump.returncode == 0 and dump.stdout.startswith(b"PGDMP"), dump.stderr.decode()
    async with asyncpg.create_pool(url, min_size=1, max_size=1) as pool:
        log = PgBackupLog(pool)
        log_id = await log.start("manual", None, unique("req"))
        assert log_id is not None
        await log.succeed(log_id, "database-backups/x.dump.gz", 10, "ab")
        assert await log.last_success() is not None
    await refused(url, "UPDATE api_keys SET revoked_at = now()")


async def test_console_reads_what_it_shows_and_writes_nothing(login_as, fresh_database):
    owner = await asyncpg.connect(fresh_database)
    _, key = await create_key(owner, "ann", "pro", actor="test")
    await owner.close()

    async def ignore(alert: Alert) -> None: ...

    async with asyncpg.create_pool(fresh_database, min_size=0, max_size=1) as owner_pool:
        await CostRecorder(PgUsageLedger(owner_pool), PriceCatalog.with_overrides({}), Thresholds(), ignore).record([
            LlmCompleted(request_id=unique("r"), user_id="ann", provider="together_ai",
                         model="meta-llama/Llama-3-8b-chat-hf", prompt_tokens=1000, completion_tokens=1000,
                         endpoint="/v1/chat/completions", success=True, latency_ms=10, tags={"team": "a", "feature": "f"})])
    url = await login_as("console")
    now = datetime.now(UTC)
    async with asyncpg.create_pool(url, min_size=1, max_size=1) as pool:
        store = PgConsoleStore(pool)
        signed_in = await store.signed_in_key(hash_api_key(key))
        assert signed_in is not None and signed_in.user_id == "ann"
        assert (await store.spend("ann", now))["day"] == (Decimal("0.0004"), 0)  # spent, saved by the cache
        window = preset("24h", now)
        assert [row.key for row in await store.breakdown(None, window, "tag", "key", 10)] == ["feature=f", "team=a"]
        assert [row.key for row in await store.breakdown("ann", window, "model", "cost", 10)] == [
            "meta-llama/Llama-3-8b-chat-hf"]
        for user in (None, "ann"):
            for dimension in DIMENSIONS:
                for order in ORDERS:
                    rows = await store.breakdown(user, window, dimension, order, 10)
                    assert sum(row.cost for row in rows) == Decimal("0.0004") * (2 if dimension == "tag" else 1)
        assert (await store.traffic(None, now - timedelta(hours=1), now + timedelta(minutes=1))).requests == 1
        assert await store.alerts(None, now - timedelta(days=1), 10) == []
        assert await store.denials(None, window.start, window.end) == []
        assert await store.backups(5) == []
        assert [k.user_id for k in await store.keys(None)] == ["ann"]
    await refused(url, "UPDATE api_keys SET revoked_at = now()")
    await refused(url, "INSERT INTO llm_cost_rollups (period, bucket, dimension, key, requests, successes,"
                       " prompt_tokens, completion_tokens, cost, latency_ms_sum) VALUES ('hour', now(), 'all', 'x',"
                       " 1, 1, 1, 1, 1, 1)")
    await refused(url, "SELECT * FROM api_key_audit")
