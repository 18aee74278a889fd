"""compose.yaml: valid under the Compose specification's JSON schema (check-jsonschema's bundled copy),
and wired as docs/operating.md says: every service ready on /health/ready, Prometheus scraping each one
with the rules, Grafana provisioned from infra/grafana, backups into MinIO, e-mail into Mailpit."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from services.deploy.settings import DeploySettings
from tests.servers import ROOT

COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = ("api", "limiter", "cost", "notifier", "health", "backup", "console")


def port_of(service: str) -> int:
    return getattr(DeploySettings(), f"{service}_port")


def env_default(value: str) -> str:
    """`${NAME:-default}` as Compose resolves it with NAME unset."""
    match = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    return match[1] if match else value


def test_compose_file_matches_the_compose_specification():
    tool = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert tool, "check-jsonschema is a dev dependency (pyproject.toml)"
    result = subprocess.run([tool, "--builtin-schema", "vendor.compose-spec", str(ROOT / "compose.yaml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_costwarden_service_is_checked_on_its_readiness_endpoint():
    for service in SERVICES:
        spec = COMPOSE["services"][service]
        assert spec["command"] == ["python", "-m", f"services.{service}"]
        probe = " ".join(spec["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port_of(service)}/health/ready" in probe, service


def test_the_console_gets_only_what_it_needs_and_finds_the_api_and_health():
    console = COMPOSE["services"]["console"]["environment"]
    assert not {"TOGETHER_API_KEY", "OPENAI_API_KEY", "SLACK_WEBHOOK_URL", "SMTP_PASSWORD"} & set(console)
    assert console["CONSOLE_API_URL"] == f"http://api:{port_of('api')}"
    assert console["CONSOLE_HEALTH_URL"] == f"http://health:{port_of('health')}"
    assert console["CONSOLE_SESSION_SECRET"].startswith("${CONSOLE_SESSION_SECRET:?")  # no default secret


def test_prometheus_scrapes_every_service_and_loads_the_rules():
    prometheus = COMPOSE["services"]["prometheus"]
    assert "./infra/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    config = yaml.safe_load((ROOT / "infra" / "prometheus" / "prometheus.yml").read_text())
    targets = {c["job_name"]: c["static_configs"][0]["targets"] for c in config["scrape_configs"]}
    assert targets == {service: [f"{service}:{port_of(service)}"] for service in SERVICES}
    assert config["rule_files"] == ["rules.yml"]
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: install Debian's prometheus package (make test does)"
    result = subprocess.run([promtool, "check", "config", "prometheus.yml"], cwd=ROOT / "infra" / "prometheus",
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_is_provisioned_from_the_repository():
    grafana = COMPOSE["services"]["grafana"]
    mounts = dict(volume.removesuffix(":ro").split(":") for volume in grafana["volumes"])
    for source in mounts:
        assert (ROOT / source).is_dir(), source
    provider = yaml.safe_load((ROOT / "infra/grafana/provisioning/dashboards/costwarden.yml").read_text())
    assert mounts["./infra/grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    datasources = (ROOT / "infra/grafana/provisioning/datasources/costwarden.yml").read_text()
    for variable in set(re.findall(r"\$\{(\w+)\}", datasources)):
        assert variable in grafana["environment"], variable


def test_backups_go_to_the_bucket_minio_creates_and_alerts_to_mailpit():
    env = {key: env_default(value) for key, value in COMPOSE["x-costwarden"]["environment"].items()}
    bucket_job = " ".join(COMPOSE["services"]["minio-bucket"]["command"])
    assert f"local/{env['S3_BACKUP_BUCKET']}" in bucket_job
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    minio = COMPOSE["services"]["minio"]["environment"]
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (minio["MINIO_ROOT_USER"],
                                                                       minio["MINIO_ROOT_PASSWORD"])
    assert COMPOSE["services"]["backup"]["depends_on"]["minio-bucket"] == {"condition": "service_completed_successfully"}
    assert (env["SMTP_HOST"], env["SMTP_PORT"]) == ("mailpit", "1025")
    assert {"nats-data:/data"} <= set(COMPOSE["services"]["nats"]["volumes"])
