"""The health board: statuses, the overall verdict, and alerts after failures in a row."""

from __future__ import annotations

from datetime import UTC, datetime

from services.health.status import CheckResult, HealthBoard

AT = datetime(2026, 11, 28, 10, tzinfo=UTC)


def result(status: str, message: str = "ok") -> CheckResult:
    return CheckResult(status, 5 if status in ("healthy", "degraded") else None, message, AT)  # type: ignore[arg-type]


def test_a_dependency_alerts_once_after_the_threshold_and_resolves_once():
    board = HealthBoard(failure_threshold=3)
    outcomes = [board.record("redis", result(s)) for s in ("healthy", "unhealthy", "unhealthy", "unhealthy",
                                                           "unhealthy", "healthy", "healthy")]
    alerts = [alert for _, alert in outcomes if alert]
    assert [(a.key, a.severity) for a in alerts] == [("health:redis:down", "critical"),
                                                     ("health:redis:down:resolved", "resolved")]
    assert alerts[1].resolves == "health:redis:down"
    transitions = [(t.previous, t.current) for t, _ in outcomes if t]
    assert transitions == [(None, "healthy"), ("healthy", "unhealthy"), ("unhealthy", "healthy")]


def test_overall_is_unhealthy_for_a_critical_dependency_or_every_provider_down_else_degraded():
    board = HealthBoard(failure_threshold=3)
    for name in ("database", "nats", "redis", "togetherAI"):
        board.record(name, result("healthy"))
    board.record("openAI", result("skipped"))
    assert (board.overall(), board.ready()) == ("healthy", True)
    board.record("supabase", result("unhealthy"))
    assert board.overall() == "degraded"
    board.record("togetherAI", result("unhealthy"))
    assert board.overall() == "unhealthy"  # the only configured provider is down
    board.record("togetherAI", result("healthy"))
    board.record("nats", result("unhealthy"))
    assert (board.overall(), board.ready()) == ("unhealthy", False)


def test_every_declared_provider_counts_for_the_overall_verdict():
    board = HealthBoard(failure_threshold=3, providers=("togetherAI", "openAI", "claude", "azure-east"))
    for name in ("database", "nats", "redis", "claude"):
        board.record(name, result("healthy"))
    for name in ("togetherAI", "azure-east"):
        board.record(name, result("unhealthy"))
    board.record("openAI", result("skipped"))
    assert board.overall() == "degraded"  # claude still serves
    board.record("claude", result("unhealthy"))
    assert board.overall() == "unhealthy"
