"""The health monitor with fake probes and a fake announcer: results, timeouts, changes and alerts."""

from __future__ import annotations

import asyncio

from services.health.monitor import CheckFailed, HealthMonitor, SkippedCheck, run_check
from services.health.status import HealthBoard
from shared.events import Alert, HealthChanged


class Announced:
    def __init__(self) -> None:
        self.changes: list[HealthChanged] = []
        self.alerts: list[Alert] = []

    async def changed(self, event: HealthChanged) -> None:
        self.changes.append(event)

    async def alert(self, alert: Alert) -> None:
        self.alerts.append(alert)


async def ok() -> str:
    return "fine"


async def failing() -> str:
    raise CheckFailed("HTTP 503")


async def hanging() -> str:
    await asyncio.sleep(10)
    return "never"


async def skipped() -> str:
    raise SkippedCheck("not checked: no OPENAI_API_KEY configured")


async def test_a_check_is_healthy_failed_skipped_or_timed_out():
    assert (await run_check(ok, 1)).status == "healthy"
    assert (r := await run_check(failing, 1)).status == "unhealthy" and r.message == "HTTP 503"
    assert (r := await run_check(skipped, 1)).status == "skipped" and "OPENAI_API_KEY" in r.message
    assert (r := await run_check(hanging, 0.05)).status == "unhealthy" and r.message == "timed out after 0.05s"


async def test_rounds_announce_changes_and_alert_after_three_failures_in_a_row():
    probes = {"database": (ok, 1.0), "redis": (failing, 1.0)}
    announced = Announced()

    async def nothing_pending() -> bool:
        return False

    monitor = HealthMonitor(HealthBoard(failure_threshold=3), probes, announced, nothing_pending)
    for _ in range(4):
        await monitor.one_round()
    assert [(c.dependency, c.current) for c in announced.changes] == [("database", "healthy"),
                                                                    ("redis", "unhealthy")]
    assert [a.key for a in announced.alerts] == ["health:redis:down"]
    assert monitor.board.rounds == 4 and monitor.migrations_applied
