"""Every SQL query in docs/LLM_MONITORING_DASHBOARD.md, and every SQL panel of the Grafana dashboard,
runs against a real, populated database."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from services.cost.pg_usage_ledger import PgUsageLedger
from services.cost.recorder import CostRecorder
from shared.events import LlmCompleted
from shared.policy import Thresholds
from shared.pricing import PriceCatalog
from tests.servers import ROOT

pytestmark = pytest.mark.adapter

DOC = ROOT / "docs" / "LLM_MONITORING_DASHBOARD.md"
QUERIES = re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.S)
GRAFANA = json.loads((ROOT / "infra" / "grafana" / "dashboards" / "costwarden.json").read_text())
SQL_PANELS = [(panel["title"], target["rawSql"]) for panel in GRAFANA["panels"] for target in panel["targets"]
              if "rawSql" in target]


def as_grafana_runs_it(sql: str) -> str:
    """Grafana's macros for the dashboard's default range, the last 48 hours."""
    return re.sub(r"\$__timeFilter\((\w+)\)", r"\1 BETWEEN now() - interval '48 hours' AND now()", sql)


def test_the_dashboard_has_queries_for_each_area():
    text = DOC.read_text()
    for heading in ("Cost by period", "Cost by model, user, endpoint", "Performance", "Rate limiting", "Alerts"):
        assert f"## {heading}" in text
    assert len(QUERIES) >= 20


@pytest.fixture
async def populated(fresh_database):
    pool = await asyncpg.create_pool(fresh_database)
    now = datetime.now(UTC)
    events = [LlmCompleted(id=f"d{i}", request_id=f"d{i}", user_id=f"u{i % 3}", provider=("together_ai", "openai")[i % 2],
                           model=("meta-llama/Llama-3-70b-chat-hf", "unpriced-model")[i % 5 == 0],
                           prompt_tokens=10_000 * i, completion_tokens=5_000 * i, endpoint="/api/agent/query",
                           success=i % 7 != 0, error=None if i % 7 else "provider_error", latency_ms=100 + i,
                           tags={"feature": "search"}, occurred_at=now - timedelta(minutes=i))
              for i in range(40)]

    async def ignore(alert) -> None:
        return None

    await CostRecorder(PgUsageLedger(pool), PriceCatalog.with_overrides({}), Thresholds(), ignore,
                       clock=lambda: now).record(events)
    await pool.execute("""INSERT INTO rate_limit_violations (id, request_id, user_id, ip_address, tier, endpoint,
                          policy, limited_by, limit_value, window_ms, created_at)
                          VALUES ('v1', 'r1', NULL, '192.0.2.1', 'anonymous', '/api/agent/query', 'standard',
                                  'requests', 3, 3600000, now())""")
    await pool.execute("""INSERT INTO backup_logs (trigger, status, object_key, size_bytes, sha256, finished_at)
                          VALUES ('manual', 'success', 'database-backups/b.dump.gz', 1024, 'ab12', now())""")
    yield pool
    await pool.close()


@pytest.mark.parametrize("query", QUERIES, ids=[f"q{i:02d}" for i in range(len(QUERIES))])
async def test_dashboard_query_runs(populated, query):
    rows = await populated.fetch(query)
    assert isinstance(rows, list)


async def test_dashboard_figures_agree_with_the_ledger(populated):
    row = await populated.fetchrow(QUERIES[0])
    for period in ("hour", "day", "month"):
        ledger = await populated.fetchval(
            f"SELECT sum(cost) FROM llm_usage WHERE created_at >= date_trunc('{period}', now(), 'UTC')")
        assert row[{"hour": "hourly", "day": "daily", "month": "monthly"}[period]] == ledger


@pytest.mark.parametrize(("title", "sql"), SQL_PANELS, ids=[title for title, _ in SQL_PANELS])
async def test_grafana_sql_panel_shows_the_recorded_data(populated, title, sql):
    rows = await populated.fetch(as_grafana_runs_it(sql))
    assert rows, f"{title} shows nothing"


async def test_grafana_top_users_agree_with_the_ledger(populated):
    sql = dict(SQL_PANELS)["Top users by cost"]
    shown = {row["user_id"]: row["cost_usd"] for row in await populated.fetch(as_grafana_runs_it(sql))}
    ledger = {row["user_id"]: float(row["cost"]) for row in await populated.fetch(
        "SELECT user_id, sum(cost) AS cost FROM llm_usage GROUP BY user_id")}
    assert shown == pytest.approx(ledger)
