"""The Grafana dashboard's structure: the original six panels and the operational ones, each reading a
datasource the provisioning defines. (Its queries run against a real Prometheus and database in
tests/integration/test_observability.py and test_dashboard_queries.py.)"""

from __future__ import annotations

import json

import yaml

from tests.servers import ROOT

GRAFANA = ROOT / "infra" / "grafana"
DASHBOARD = json.loads((GRAFANA / "dashboards" / "costwarden.json").read_text())


def test_the_original_panels_and_the_operational_ones_are_there():
    titles = {panel["title"] for panel in DASHBOARD["panels"]}
    original = {"Hourly cost (USD)", "Requests per minute", "Success rate", "p95 latency", "Cost by model",
                "Top users by cost"}
    operational = {"Limiter denials", "Alert deliveries", "Dependency health", "Consumer lag", "Backups"}
    assert original | operational <= titles


def test_every_query_reads_a_provisioned_datasource():
    provisioned = {ds["uid"]: ds["type"] for ds in yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "costwarden.yml").read_text())["datasources"]}
    for panel in DASHBOARD["panels"]:
        for target in [panel, *panel["targets"]]:
            assert provisioned.get(target["datasource"]["uid"]) == target["datasource"]["type"], panel["title"]
        for target in panel["targets"]:
            assert ("expr" in target) == (target["datasource"]["type"] == "prometheus"), panel["title"]


def test_panels_have_unique_ids_and_do_not_overlap():
    assert len({panel["id"] for panel in DASHBOARD["panels"]}) == len(DASHBOARD["panels"])
    cells = [(x, y) for panel in DASHBOARD["panels"] for pos in [panel["gridPos"]]
             for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])]
    assert len(cells) == len(set(cells)) and all(x < 24 for x, _ in cells)
