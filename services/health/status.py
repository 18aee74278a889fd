"""Dependency health as state: results of checks, failure streaks, transitions, the overall verdict
and the two response formats (the original JSON and IETF health+json). Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from shared.events import Alert

Status = Literal["healthy", "degraded", "unhealthy", "skipped"]
CRITICAL = ("database", "nats")  # readiness needs these
# The implicit providers under the names dashboards, alert rules and health.changed consumers know.
IMPLICIT_PROVIDER_NAMES = {"together_ai": "togetherAI", "openai": "openAI"}
IETF_STATUS = {"healthy": "pass", "degraded": "warn", "unhealthy": "fail", "skipped": "warn"}
COMPONENT_TYPE = {"database": "datastore", "redis": "datastore", "nats": "component"}


@dataclass(frozen=True)
class CheckResult:
    status: Status
    latency_ms: int | None
    message: str
    checked_at: datetime


@dataclass
class Dependency:
    name: str
    result: CheckResult | None = None
    failures_in_a_row: int = 0
    alert_open: bool = False


@dataclass(frozen=True)
class Transition:
    dependency: str
    previous: Status | None
    current: Status
    result: CheckResult


@dataclass
class HealthBoard:
    """What the health service knows, updated by each round of checks."""

    failure_threshold: int
    providers: tuple[str, ...] = tuple(IMPLICIT_PROVIDER_NAMES.values())  # the dependencies that serve calls
    dependencies: dict[str, Dependency] = field(default_factory=dict)
    rounds: int = 0

    def record(self, name: str, result: CheckResult) -> tuple[Transition | None, Alert | None]:
        """Store a result; return the status change (if any) and the alert it makes due (if any)."""
        dep = self.dependencies.setdefault(name, Dependency(name))
        previous = dep.result.status if dep.result else None
        dep.result = result
        transition = Transition(name, previous, result.status, result) if previous != result.status else None
        alert = None
        if result.status == "unhealthy":
            dep.failures_in_a_row += 1
            if dep.failures_in_a_row >= self.failure_threshold and not dep.alert_open:
                dep.alert_open = True
                alert = down_alert(name, dep.failures_in_a_row, result)
        else:
            dep.failures_in_a_row = 0
            if dep.alert_open:
                dep.alert_open = False
                alert = recovered_alert(name, result)
        return transition, alert

    def status_of(self, name: str) -> Status | None:
        dep = self.dependencies.get(name)
        return dep.result.status if dep and dep.result else None

    def overall(self) -> Status:
        """unhealthy when a critical dependency or Redis is down, or no provider can serve; degraded when
        something else is down (a provider with its fallback up, an extra dependency)."""
        statuses = {name: dep.result.status for name, dep in self.dependencies.items() if dep.result}
        if any(statuses.get(name) == "unhealthy" for name in (*CRITICAL, "redis")):
            return "unhealthy"
        providers = [statuses[p] for p in self.providers if p in statuses and statuses[p] != "skipped"]
        if providers and all(s == "unhealthy" for s in providers):
            return "unhealthy"
        if any(s in ("unhealthy", "degraded") for s in statuses.values()):
            return "degraded"
        return "healthy"

    def ready(self) -> bool:
        return all(self.status_of(name) in ("healthy", "degraded") for name in CRITICAL)


def provider_dependency(provider: str) -> str:
    """The dependency a provider is reported as: its own name, but `togetherAI` and `openAI` for the
    implicit two."""
    return IMPLICIT_PROVIDER_NAMES.get(provider, provider)


def down_alert(name: str, failures: int, result: CheckResult) -> Alert:
    return Alert(key=f"health:{name}:down", source="health", severity="critical", title=f"{name} is down",
                 text=f"CRITICAL: {name} failed {failures} health checks in a row: {result.message}",
                 window=result.checked_at.isoformat())


def recovered_alert(name: str, result: CheckResult) -> Alert:
    return Alert(key=f"health:{name}:down:resolved", source="health", severity="resolved",
                 title=f"{name} recovered", text=f"RESOLVED: {name} is {result.status} again: {result.message}",
                 window=result.checked_at.isoformat(), resolves=f"health:{name}:down")


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def original_document(board: HealthBoard, now: datetime, version: str, uptime_s: int) -> dict:
    """The original system's /health layout."""
    return {
        "status": board.overall(),
        "timestamp": iso(now),
        "version": version,
        "uptime": uptime_s,
        "dependencies": dependencies_document(board.dependencies),
    }


def dependencies_document(dependencies: Mapping[str, Dependency]) -> dict:
    return {
        name: {"status": dep.result.status, "latency": dep.result.latency_ms, "message": dep.result.message,
               "lastChecked": iso(dep.result.checked_at)}
        for name, dep in sorted(dependencies.items()) if dep.result
    }


def health_json_document(board: HealthBoard, version: str, service_id: str) -> dict:
    """draft-inadarei-api-health-check: status pass/warn/fail, checks keyed "component:measurement"."""
    checks: dict[str, list[dict]] = {}
    for name, dep in sorted(board.dependencies.items()):
        if not dep.result:
            continue
        entry: dict[str, object] = {"componentId": name, "componentType": COMPONENT_TYPE.get(name, "system"),
                 "status": IETF_STATUS[dep.result.status], "time": iso(dep.result.checked_at),
                 "output": "" if dep.result.status == "healthy" else dep.result.message}
        if dep.result.latency_ms is not None:
            entry.update(observedValue=dep.result.latency_ms, observedUnit="ms")
        checks[f"{name}:responseTime"] = [entry]
    return {"status": IETF_STATUS[board.overall()], "version": version.split(".")[0], "releaseId": version,
            "serviceId": service_id, "description": "costwarden dependencies", "checks": checks}
