"""infra/k8s: the Kustomize base and the example overlay are valid Kubernetes (kubernetes-validate
--strict, schemas bundled, no cluster), and hold what running costwarden for real needs: reachable
gateway and health, autoscaling, disruption budgets, least network access, unprivileged containers."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import jsonpatch
import kubernetes_validate
import pytest
import yaml

from tests.servers import ROOT

K8S = ROOT / "infra" / "k8s"
SERVICES = ("api", "limiter", "cost", "notifier", "health", "backup", "console")
PUBLIC = {"api", "health", "console"}
VERSION = "1.31.0"


def kustomize(directory: Path) -> list[dict]:
    """The documents `kubectl kustomize` renders for the features these kustomizations use: resources
    (files and directories), namespace, images and JSON 6902 patches (compared with kubectl's own
    rendering below, where kubectl is installed)."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs: list[dict] = []
    for resource in spec.get("resources", []):
        path = directory / resource
        docs += kustomize(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    for doc in docs:
        if "namespace" in spec and doc["kind"] != "Namespace":
            doc["metadata"]["namespace"] = spec["namespace"]
        for container in containers(doc):
            for image in spec.get("images", []):
                if container["image"].split(":")[0] == image["name"]:
                    container["image"] = f"{image['newName']}:{image['newTag']}"
    for patch in spec.get("patches", []):
        target = patch["target"]
        matched = [i for i, d in enumerate(docs) if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]]
        assert matched, f"patch target {target} is not in the resources"
        for i in matched:
            docs[i] = jsonpatch.apply_patch(docs[i], yaml.safe_load(patch["patch"]))
    return docs


def containers(doc: dict) -> list[dict]:
    return doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])


def of_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


BASE = kustomize(K8S / "base")
OVERLAY = kustomize(K8S / "overlays" / "example")


def test_the_base_lists_every_file_it_holds():
    listed = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in (K8S / "base").glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("rendering", ["base", "overlay"])
def test_every_resource_is_valid_kubernetes_with_no_unknown_field(rendering):
    for doc in BASE if rendering == "base" else OVERLAY:
        kubernetes_validate.validate(doc, VERSION, strict=True)  # raises with the field at fault


def test_every_service_runs_unprivileged_with_probes_resources_and_metrics():
    deployments = of_kind(BASE, "Deployment")
    assert set(deployments) == {f"costwarden-{s}" for s in SERVICES}
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True, name
        assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true", name
        for container in containers(deployment):
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]) & set(container["resources"]["limits"])
            assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready", name
            assert container["livenessProbe"]["httpGet"]["path"] == "/health/live", name
            assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(container["ports"][0]["containerPort"])
            assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), name  # the only writable path
            service = name.removeprefix("costwarden-")
            seed = next(v for v in pod["spec"]["volumes"] if v["name"] == "nats-identity")
            assert seed["secret"]["secretName"] == f"costwarden-nats-{service}", name  # its own bus identity
            assert {"name": "NATS_NKEY_SEED_FILE", "value": "/etc/costwarden/nats/seed"} in container["env"], name


def test_the_gateway_health_and_console_have_services_that_reach_their_pods():
    services = of_kind(BASE, "Service")
    assert set(services) == {f"costwarden-{s}" for s in PUBLIC}
    deployments = of_kind(BASE, "Deployment")
    for name, service in services.items():
        pod = deployments[name]["spec"]["template"]
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        port_names = {p["name"] for c in containers(deployments[name]) for p in c["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names


def test_api_limiter_and_cost_autoscale_and_every_service_has_a_disruption_budget():
    deployments = of_kind(BASE, "Deployment")
    hpas = of_kind(BASE, "HorizontalPodAutoscaler")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()} == {
        "costwarden-api", "costwarden-limiter", "costwarden-cost"}
    for hpa in hpas.values():
        assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["scaleTargetRef"]["name"] in deployments
    budgets = of_kind(BASE, "PodDisruptionBudget")
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert [b for b in budgets.values() if b["spec"]["selector"]["matchLabels"].items() <= labels.items()], name


def selects(selector: dict, labels: dict) -> bool:
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        if expression["operator"] != "In" or labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def test_only_the_gateway_health_and_console_are_reachable_from_outside_the_namespace():
    policies = of_kind(BASE, "NetworkPolicy")
    pods = {s: {"app": "costwarden", "service": s} for s in SERVICES}
    deny = policies["costwarden-default-deny"]["spec"]
    assert deny["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in deny and "egress" not in deny
    assert all(selects(deny["podSelector"], labels) for labels in pods.values())
    for service, labels in pods.items():
        sources = [peer for policy in policies.values() if selects(policy["spec"]["podSelector"], labels)
                   for rule in policy["spec"].get("ingress", []) for peer in rule.get("from", [{"any": True}])]
        from_anywhere = [peer for peer in sources if "any" in peer or "ipBlock" in peer]
        assert bool(from_anywhere) == (service in PUBLIC), service
        others = [peer for peer in sources if peer not in from_anywhere]
        assert all(peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
                   for peer in others), service


def test_only_services_that_call_out_reach_the_internet_and_only_the_limiter_api_and_health_reach_redis():
    policies = of_kind(BASE, "NetworkPolicy")
    internet, redis = policies["costwarden-internet-egress"]["spec"], policies["costwarden-redis-egress"]["spec"]
    assert {s for s in SERVICES if selects(internet["podSelector"], {"app": "costwarden", "service": s})} == {
        "api", "health", "notifier", "backup"}
    assert {s for s in SERVICES if selects(redis["podSelector"], {"app": "costwarden", "service": s})} == {
        "limiter", "api", "health"}


def test_the_console_gets_its_own_secret_and_reaches_only_the_api_and_health_in_the_namespace():
    console = containers(of_kind(BASE, "Deployment")["costwarden-console"])[0]
    assert "envFrom" in console and all("secretRef" not in source for source in console["envFrom"])  # no provider keys
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in console["env"] if "valueFrom" in e}
    assert secrets == {"DATABASE_URL": "costwarden-secrets", "CONSOLE_SESSION_SECRET": "costwarden-console"}
    assert {"name": "CONSOLE_COOKIE_SECURE", "value": "true"} in console["env"]
    egress = of_kind(BASE, "NetworkPolicy")["costwarden-console-egress"]["spec"]
    targets = {s for s in SERVICES for rule in egress["egress"] for peer in rule["to"]
               if selects(peer["podSelector"], {"app": "costwarden", "service": s})}
    assert targets == {"api", "health"}
    urls = {e["name"]: e["value"] for e in console["env"] if "value" in e}
    services = of_kind(BASE, "Service")
    for variable, service in (("CONSOLE_API_URL", "costwarden-api"), ("CONSOLE_HEALTH_URL", "costwarden-health")):
        assert urls[variable] == f"http://{service}:{services[service]['spec']['ports'][0]['port']}"


def test_the_overlay_pins_the_image_and_namespace_and_applies_its_patches():
    assert all(d["metadata"].get("namespace") == "costwarden" for d in OVERLAY if d["kind"] != "Namespace")
    images = {c["image"] for d in OVERLAY for c in containers(d)}
    assert images == {"registry.example.com/costwarden:0.1.0"}
    assert of_kind(OVERLAY, "HorizontalPodAutoscaler")["costwarden-api"]["spec"]["maxReplicas"] == 20
    assert of_kind(OVERLAY, "ConfigMap")["costwarden-config"]["data"]["S3_BACKUP_BUCKET"] == "acme-costwarden-backups"


def test_kubectl_renders_the_overlay_as_this_test_does():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the overlay is checked with this module's rendering only")
    rendered = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / "example")], capture_output=True,
                              text=True, check=True).stdout

    def by_identity(docs: list[dict]) -> dict[tuple[str, str], dict]:
        return {(d["kind"], d["metadata"]["name"]): d for d in docs}

    assert by_identity([d for d in yaml.safe_load_all(rendered) if d]) == by_identity(OVERLAY)
