"""A real Prometheus (Debian's `prometheus` binary) scraping the services `make run` starts: after
traffic of every kind, every dashboard query and every series an alert rule reads returns data, and
every rule evaluates without error. A wrong metric name or label fails here, not in production."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from decimal import Decimal
from pathlib import Path

import httpx
import nats
import pytest
import yaml

from shared.bus import inbox_prefix
from shared.events import Alert
from tests.conftest import set_faults, unique
from tests.integration.helpers import auth, chat_body, new_key
from tests.integration.system import costwarden_run
from tests.servers import ROOT, ProcessServer, free_port, s3_server
from tests.support.polling import eventually

pytestmark = pytest.mark.system

RULES = ROOT / "infra" / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "infra" / "grafana" / "dashboards" / "costwarden.json"
SERVICES = ("api", "limiter", "cost", "notifier", "health", "backup")  # those with metrics to scrape
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset"}


def rule_expressions() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def dashboard_queries() -> dict[str, str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    queries = {}
    for panel in panels:
        for target in panel["targets"]:
            if "expr" in target:
                expr = target["expr"]
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
                queries[f"{panel['title']} ({target['refId']})"] = expr
    return queries


def vector_selectors(expr: str) -> set[str]:
    """The series an expression reads (`name{matchers}`), without its functions, grouping labels,
    ranges and numbers: each must exist on the running system for the expression to mean anything."""
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    found = set()
    for match in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?(\s*\()?", expr):
        name, matchers, call = match.groups()
        if not call and name not in PROMQL_WORDS:
            found.add(name + (matchers or ""))
    return found


def test_selectors_are_read_from_promql():
    assert vector_selectors('sum by (le) (rate(a_bucket{x="5.."}[5m])) / max(b) > on() group_left c{y="1"} * 3') \
        == {'a_bucket{x="5.."}', "b", 'c{y="1"}'}


@pytest.fixture
def s3():
    server, env = s3_server("cw-observed")
    yield env
    server.stop()


@pytest.fixture
def system(fresh_database, redis_url, s3, tmp_path):
    """`costwarden run` with every service (backup included), private providers and a Slack sink."""
    with costwarden_run(fresh_database, redis_url, s3, tmp_path) as running:
        yield running


def prometheus_scraping(ports: dict[str, int]) -> tuple[ProcessServer, str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is missing: install Debian's prometheus package (make test does)")
    data = Path(tempfile.mkdtemp(prefix="prometheus-"))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": service, "static_configs": [
            {"targets": [f"127.0.0.1:{ports[f'{service.upper()}_PORT']}"]}]} for service in SERVICES],
    }
    (data / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    server = ProcessServer("prometheus", [binary, f"--config.file={data / 'prometheus.yml'}",
                                          f"--storage.tsdb.path={data / 'tsdb'}",
                                          f"--web.listen-address=127.0.0.1:{port}"], port)
    server.start()
    return server, f"http://127.0.0.1:{port}"


async def send_traffic_of_every_kind(system) -> None:
    api = f"http://127.0.0.1:{system['ports']['API_PORT']}"
    pro = await new_key(system["database_url"], unique("obs-pro"), "pro")
    free = await new_key(system["database_url"], unique("obs-free"), "free")
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        for _ in range(3):
            assert (await client.post("/v1/chat/completions", json=chat_body(), headers=auth(pro))).status_code == 200
        statuses = [(await client.post("/v1/chat/completions", json=chat_body(), headers=auth(free))).status_code
                    for _ in range(12)]
        assert 429 in statuses  # the free tier's 10 an hour
        for server in system["providers"].values():
            set_faults(server, status=500, count=5)
        assert (await client.post("/v1/chat/completions", json=chat_body(), headers=auth(pro))).status_code == 502
        for server in system["providers"].values():
            set_faults(server)
        assert (await client.get("/v1/nothing-here", headers=auth(pro))).status_code == 404
    # make run's NATS has an identity per service: the test publishes as other services would, as admin
    nc = await nats.connect(f"nats://127.0.0.1:{system['ports']['NATS']}", nkeys_seed=str(system["admin_seed"]),
                            inbox_prefix=inbox_prefix("admin"))
    try:
        js = nc.jetstream()
        alert = Alert(key=unique("cost:all:hour"), source="cost", severity="warning", title="LLM Cost Alert",
                      text="WARNING: Hourly LLM cost ($12.00) exceeded warning threshold ($10)", period="hourly",
                      threshold=Decimal(10), actual=Decimal(12), overage=Decimal(2), window="2026-11-28T08:00:00+00:00")
        await js.publish("alert.cost.warning", alert.model_dump_json().encode(), stream="ALERTS")
        await js.publish("llm.completed", b"{not json", stream="LLM")  # dead-lettered by its consumers
    finally:
        await nc.close()
    assert await eventually(lambda: system["slack"].delivered("/slack"), 30)


async def test_every_dashboard_query_and_rule_series_has_data_on_the_running_system(system):
    prometheus, url = prometheus_scraping(system["ports"])
    try:
        await send_traffic_of_every_kind(system)
        queries = {**dashboard_queries(),
                   **{f"{alert}: {selector}": selector for alert, expr in rule_expressions().items()
                      for selector in vector_selectors(expr)}}

        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            async def empty() -> list[str]:
                missing = []
                for name, query in queries.items():
                    answer = (await client.get("/api/v1/query", params={"query": query})).json()
                    assert answer["status"] == "success", (name, answer)
                    if not answer["data"]["result"]:
                        missing.append(name)
                return missing

            async def nothing_missing() -> bool:
                return not await empty()

            await eventually(nothing_missing, 60, interval_s=1)  # as often as Prometheus scrapes
            assert await empty() == []

            rules = (await client.get("/api/v1/rules")).json()["data"]["groups"][0]["rules"]
            assert {rule["name"] for rule in rules} == set(rule_expressions())
            assert [(rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"] == []
    finally:
        prometheus.stop()
