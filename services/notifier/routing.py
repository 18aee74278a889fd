"""Which channels an alert goes to. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from shared.events import Alert
from shared.policy import Route


def channels_for(alert: Alert, routes: Sequence[Route], configured: Collection[str]) -> list[str]:
    """The channels of the first route that matches the alert, among those that are configured."""
    for route in routes:
        if alert.severity in route.severities and (route.sources is None or alert.source in route.sources):
            return [channel for channel in route.channels if channel in configured]
    return []
