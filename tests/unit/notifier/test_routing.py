"""Which channels an alert goes to."""

from __future__ import annotations

from decimal import Decimal

from services.notifier.routing import DEFAULT_ROUTES, Route, channels_for
from shared.events import Alert


def alert(i: int = 0, severity: str = "critical", source: str = "cost", text: str | None = None) -> Alert:
    return Alert(key=f"k{i}", source=source, severity=severity, title="LLM Cost Alert",
                 text=text or f"{severity.upper()}: Hourly LLM cost ($52.34) exceeded {severity} threshold ($50)",
                 period="hourly", threshold=Decimal(50), actual=Decimal("52.34"), overage=Decimal("2.34"))


def test_routes_pick_channels_by_severity_and_source():
    configured = {"slack", "email", "webhook"}
    assert channels_for(alert(severity="warning"), DEFAULT_ROUTES, configured) == ["slack", "webhook"]
    assert channels_for(alert(severity="critical"), DEFAULT_ROUTES, configured) == ["slack", "email", "webhook"]
    assert channels_for(alert(severity="critical"), DEFAULT_ROUTES, {"slack"}) == ["slack"]
    routes = [Route(severities=["critical"], sources=["backup"], channels=["email"]), *DEFAULT_ROUTES]
    assert channels_for(alert(source="backup"), routes, configured) == ["email"]
    assert channels_for(alert(source="cost"), routes, configured) == ["slack", "email", "webhook"]
