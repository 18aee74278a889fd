"""Console page latency on a month of 1 M `llm_usage` rows (the issue's benchmark data): each page,
signed in as an admin and as a heavy user, beside two baselines measured in the same run: the
console's bare round trip (/health/live: FastAPI, no query), and the 30-day model breakdown read from
the raw ledger instead of the rollups (what a page would cost without them).
Run by `make bench` (or `python -m bench console`)."""

from __future__ import annotations

import re
import time
import uuid

import asyncpg
import httpx

from services.deploy.migrate import apply_migrations
from services.keys.pg_key_admin import create_key
from tests.servers import ServiceProcess, free_port

ROWS = 1_000_000
USERS = 2_000
HEAVY_SHARE = 0.05  # one user makes 5% of the calls: the heaviest a non-admin page reads from the ledger
TARGET_MS = 300
SAMPLES = 20

FILL = """
INSERT INTO llm_usage (request_id, user_id, tier, provider, model, prompt_tokens, completion_tokens, cost, priced,
                       endpoint, success, latency_ms, tags, usage_source, created_at)
SELECT 'bench-' || i,
       CASE WHEN i % 20 = 0 THEN 'heavy' ELSE 'user-' || (i % $2) END,
       (ARRAY['free', 'pro', 'enterprise'])[1 + i % 3],
       CASE WHEN i % 10 = 0 THEN 'openai' ELSE 'together_ai' END,
       'model-' || (i % 12),
       100 + i % 900, 20 + i % 300,
       ((100 + i % 900) * 0.0000009 + (20 + i % 300) * 0.0000009)::numeric(20, 10), true,
       (ARRAY['/v1/chat/completions', '/api/agent/chat', '/api/agent/analyze'])[1 + i % 3],
       i % 50 <> 0, 50 + i % 2000,
       jsonb_build_object('team', 'team-' || (i % 5), 'feature', 'f-' || (i % 7)),
       CASE WHEN i % 40 = 0 THEN 'estimated' ELSE 'provider' END,
       now() - (i::double precision / $1) * interval '30 days'
FROM generate_series(1, $1) AS i
"""

HOUR_ROLLUPS = """
INSERT INTO llm_cost_rollups (period, bucket, dimension, key, requests, successes, prompt_tokens, completion_tokens,
                              cost, latency_ms_sum, estimated_requests, estimated_cost)
SELECT 'hour', date_trunc('hour', u.created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', d.dimension, d.key, count(*),
       count(*) FILTER (WHERE success), sum(prompt_tokens), sum(completion_tokens), sum(cost), sum(latency_ms),
       count(*) FILTER (WHERE usage_source = 'estimated'), coalesce(sum(cost) FILTER (WHERE usage_source = 'estimated'), 0)
FROM llm_usage u CROSS JOIN LATERAL (
    SELECT 'all', '' UNION ALL SELECT 'model', u.model UNION ALL SELECT 'endpoint', u.endpoint
    UNION ALL SELECT 'user', u.user_id UNION ALL SELECT 'tag', t.key || '=' || t.value FROM jsonb_each_text(u.tags) t
) AS d(dimension, key)
GROUP BY 2, 3, 4
"""

COARSER_ROLLUPS = """
INSERT INTO llm_cost_rollups (period, bucket, dimension, key, requests, successes, prompt_tokens, completion_tokens,
                              cost, latency_ms_sum, estimated_requests, estimated_cost)
SELECT $1, date_trunc($1, bucket AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', dimension, key, sum(requests), sum(successes),
       sum(prompt_tokens), sum(completion_tokens), sum(cost), sum(latency_ms_sum), sum(estimated_requests),
       sum(estimated_cost)
FROM llm_cost_rollups WHERE period = 'hour' GROUP BY 2, 3, 4
"""

SIDE_TABLES = """
INSERT INTO rate_limit_violations (id, request_id, user_id, ip_address, tier, endpoint, policy, limited_by,
                                   limit_value, window_ms, created_at)
SELECT 'v-' || i, 'r-' || i, 'user-' || (i % 300), NULL, (ARRAY['free', 'pro'])[1 + i % 2], '/v1/chat/completions',
       'standard', (ARRAY['requests', 'strict', 'tokens', 'budget'])[1 + i % 4], 10, 3600000,
       now() - (i::double precision / 20000) * interval '30 days'
FROM generate_series(1, 20000) AS i;
INSERT INTO alert_deliveries (alert_key, alert_id, channel, attempt, status, created_at)
SELECT 'health:dep-' || (i % 200) || ':down', 'a-' || i, (ARRAY['slack', 'email', 'webhook'])[1 + i % 3], 1, 'sent',
       now() - (i::double precision / 600) * interval '7 days'
FROM generate_series(1, 600) AS i;
INSERT INTO backup_logs (trigger, status, object_key, size_bytes, sha256, started_at, finished_at)
SELECT 'schedule', 'success', 'database-backups/b' || i || '.dump.gz', 1000000 + i, md5(i::text) || md5(i::text),
       now() - i * interval '1 day', now() - i * interval '1 day' + interval '1 minute'
FROM generate_series(1, 60) AS i;
"""


async def fill(database_url: str) -> float:
    started = time.perf_counter()
    conn = await asyncpg.connect(database_url)
    try:
        for months_back in (0, 1):
            await conn.execute("SELECT ensure_llm_usage_partition(now() - $1 * interval '1 month')", months_back)
        await conn.execute(FILL, ROWS, USERS)
        await conn.execute(HOUR_ROLLUPS)
        for period in ("day", "month"):
            await conn.execute(COARSER_ROLLUPS, period)
        await conn.execute(SIDE_TABLES)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return time.perf_counter() - started


async def key_for(database_url: str, user: str, admin: bool) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        return (await create_key(conn, user, "enterprise", actor="bench", is_admin=admin))[1]
    finally:
        await conn.close()


async def sign_in(client: httpx.AsyncClient, key: str) -> None:
    form = (await client.get("/signin")).text
    csrf = re.search(r'name="csrf" value="([^"]+)"', form)
    assert csrf is not None
    answer = await client.post("/signin", data={"key": key, "csrf": csrf.group(1), "next": "/"})
    assert answer.status_code == 303, answer.text


async def timings(client: httpx.AsyncClient, path: str) -> list[float]:
    for _ in range(2):
        answer = await client.get(path)
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
    out = []
    for _ in range(SAMPLES):
        started = time.perf_counter()
        answer = await client.get(path)
        out.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200
    return sorted(out)


PAGES = ["/", "/costs?range=24h&by=model", "/costs?range=7d&by=user", "/costs?range=30d&by=model",
         "/costs?range=30d&by=user&top=100", "/costs?range=30d&by=tag", "/costs.csv?range=30d&by=user&top=500",
         "/keys", "/limits?range=7d", "/alerts", "/backups"]
USER_PAGES = ["/", "/costs?range=30d&by=model", "/costs?range=30d&by=tag", "/keys", "/limits?range=30d"]

RAW_30D_BY_MODEL = """
SELECT model, count(*), sum(prompt_tokens), sum(completion_tokens), sum(cost) FROM llm_usage
WHERE created_at >= now() - interval '30 days' GROUP BY model ORDER BY sum(cost) DESC LIMIT 20
"""


async def bench_console(env: dict[str, str], pg: str, lines: list[str]) -> None:
    name = f"costwarden_console_bench_{uuid.uuid4().hex[:8]}"
    admin_conn = await asyncpg.connect(f"{pg}/postgres")
    await admin_conn.execute(f'CREATE DATABASE "{name}"')
    database_url = f"{pg}/{name}"
    try:
        await apply_migrations(database_url)
        fill_s = await fill(database_url)
        admin_key, heavy_key = await key_for(database_url, "ops", True), await key_for(database_url, "heavy", False)
        port = free_port()
        console = ServiceProcess("console", {**env, "DATABASE_URL": database_url, "CONSOLE_PORT": str(port),
                                             "CONSOLE_SESSION_SECRET": "bench-secret-0123456789",
                                             "CONSOLE_API_URL": "http://127.0.0.1:9", "CONSOLE_HEALTH_URL":
                                             "http://127.0.0.1:9"}, port).start()
        try:
            lines.append("")
            lines.append(f"Console pages on {ROWS:,} llm_usage rows over 30 days ({USERS:,} users; 'heavy' makes "
                         f"{HEAVY_SHARE:.0%}; filled and rolled up in {fill_s:.0f} s); {SAMPLES} sequential requests "
                         f"each, target p95 <= {TARGET_MS} ms")
            async with httpx.AsyncClient(base_url=console.url, timeout=30) as client:
                floor = await timings(client, "/health/live")
                conn = await asyncpg.connect(database_url)
                raw = []
                for _ in range(5):
                    started = time.perf_counter()
                    await conn.fetch(RAW_30D_BY_MODEL)
                    raw.append((time.perf_counter() - started) * 1000)
                await conn.close()
                lines.append(f"  {'baseline: /health/live (no query)':<52} p50 {floor[len(floor) // 2]:7.1f} ms")
                lines.append(f"  {'baseline: 30 d by model from the raw ledger (SQL only)':<52} "
                             f"p50 {sorted(raw)[2]:7.1f} ms")
                for who, key, pages in (("admin", admin_key, PAGES), ("heavy user", heavy_key, USER_PAGES)):
                    client.cookies.clear()
                    await sign_in(client, key)
                    for path in pages:
                        ms = await timings(client, path)
                        p50, p95 = ms[len(ms) // 2], ms[int(0.95 * len(ms)) - 1]
                        verdict = "ok" if p95 <= TARGET_MS else "OVER"
                        lines.append(f"  {who + ' ' + path:<52} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  {verdict}")
        finally:
            console.stop()
    finally:
        await admin_conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin_conn.close()
