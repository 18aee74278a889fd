"""The alert rules in infra/prometheus: valid for Prometheus, each unit-tested by promtool (firing and
silent cases), each with severity and summary (tests/unit/test_docs.py checks each rule's runbook)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.servers import ROOT

RULES_DIR = ROOT / "infra" / "prometheus"


def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is missing: install Debian's prometheus package (make test does)")
    return binary


def alert_rules() -> list[dict]:
    groups = yaml.safe_load((RULES_DIR / "rules.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_accepts_the_rules():
    result = subprocess.run([promtool(), "check", "rules", "rules.yml"], cwd=RULES_DIR, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_passes_its_promtool_unit_tests():
    result = subprocess.run([promtool(), "test", "rules", "rules_test.yml"], cwd=RULES_DIR, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_is_tested_firing_and_silent():
    tests = yaml.safe_load((RULES_DIR / "rules_test.yml").read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    for rule in alert_rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']} is never tested firing"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']} is never tested silent"


def test_every_rule_has_a_severity_and_a_summary():
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
