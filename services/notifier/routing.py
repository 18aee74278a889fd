"""Which channels an alert goes to: the routes an operator gives (`routes:` in the YAML file), and the
first that matches. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Literal

from pydantic import BaseModel

from shared.events import Alert


class Route(BaseModel):
    """Alerts of these severities (and sources, when given) go to these channels."""

    severities: list[Literal["warning", "critical", "resolved"]]
    sources: list[Literal["cost", "health", "backup"]] | None = None
    channels: list[Literal["slack", "email", "webhook"]]


DEFAULT_ROUTES = [
    Route(severities=["warning"], channels=["slack", "webhook"]),
    Route(severities=["critical"], channels=["slack", "email", "webhook"]),
    Route(severities=["resolved"], channels=["slack", "webhook"]),
]


def channels_for(alert: Alert, routes: Sequence[Route], configured: Collection[str]) -> list[str]:
    """The channels of the first route that matches the alert, among those that are configured."""
    for route in routes:
        if alert.severity in route.severities and (route.sources is None or alert.source in route.sources):
            return [channel for channel in route.channels if channel in configured]
    return []
