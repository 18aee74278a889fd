"""The health use case: one round of checks at a time, every dependency at once, each under its own
timeout; the board keeps the results, and what changed is announced."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Protocol

from prometheus_client import Gauge

from services.health.status import CheckResult, HealthBoard, Status
from shared.events import Alert, HealthChanged

log = logging.getLogger(__name__)

UP = Gauge("costwarden_dependency_up", "1 when the dependency is healthy or degraded, 0 when not", ["dependency"])
LATENCY = Gauge("costwarden_dependency_latency_seconds", "Latency of the last successful check", ["dependency"])
STATUS = Gauge("costwarden_dependency_status", "Current status (1 for the current one)", ["dependency", "status"])
STATUSES = ("healthy", "degraded", "unhealthy", "skipped")
SLOW_FRACTION = 0.8  # answering in more than this share of the timeout counts as degraded

Probe = Callable[[], Awaitable[str]]  # returns the message for a healthy result, raises otherwise


class SkippedCheck(Exception):
    """The dependency is not checked (not configured); the message says why."""


class CheckFailed(Exception):
    """The dependency answered wrongly or not at all; the message says how, without secrets."""


async def run_check(probe: Probe, timeout_s: float) -> CheckResult:
    started = time.perf_counter()
    try:
        message = await asyncio.wait_for(probe(), timeout_s)
    except TimeoutError:
        return CheckResult("unhealthy", None, f"timed out after {timeout_s:g}s", datetime.now(UTC))
    except SkippedCheck as skipped:
        return CheckResult("skipped", None, str(skipped), datetime.now(UTC))
    except CheckFailed as failed:
        return CheckResult("unhealthy", None, str(failed), datetime.now(UTC))
    except Exception as exc:  # noqa: BLE001 - a health check reports every failure, whatever its type
        return CheckResult("unhealthy", None, f"{type(exc).__name__}: {exc}"[:200], datetime.now(UTC))
    latency_ms = round((time.perf_counter() - started) * 1000)
    status: Status = "degraded" if latency_ms > timeout_s * 1000 * SLOW_FRACTION else "healthy"
    return CheckResult(status, latency_ms, message, datetime.now(UTC))


class Announcer(Protocol):
    async def changed(self, event: HealthChanged) -> None: ...

    async def alert(self, alert: Alert) -> None: ...


class HealthMonitor:
    def __init__(self, board: HealthBoard, probes: Mapping[str, tuple[Probe, float]], announcer: Announcer,
                 migrations_pending: Callable[[], Awaitable[bool]]) -> None:
        self.board = board
        self.probes = dict(probes)
        self.announcer = announcer
        self.migrations_pending = migrations_pending
        self.migrations_applied = False

    async def one_round(self) -> None:
        names = list(self.probes)
        results = await asyncio.gather(*(run_check(*self.probes[name]) for name in names))
        for name, result in zip(names, results, strict=True):
            await self._record(name, result)
        if not self.migrations_applied:
            try:
                self.migrations_applied = not await self.migrations_pending()
            except Exception as exc:  # noqa: BLE001 - the database may be the dependency that is down
                log.warning("could not read migrations: %s", type(exc).__name__)
        self.board.rounds += 1

    async def _record(self, name: str, result: CheckResult) -> None:
        transition, alert = self.board.record(name, result)
        UP.labels(name).set(1 if result.status in ("healthy", "degraded") else 0)
        if result.latency_ms is not None:
            LATENCY.labels(name).set(result.latency_ms / 1000)
        for status in STATUSES:
            STATUS.labels(name, status).set(1 if status == result.status else 0)
        try:
            if transition:
                log.info("%s: %s -> %s (%s)", name, transition.previous, transition.current, result.message)
                await self.announcer.changed(HealthChanged(
                    dependency=name, previous=transition.previous, current=result.status, message=result.message,
                    latency_ms=result.latency_ms))
            if alert:
                await self.announcer.alert(alert)
        except Exception as exc:  # noqa: BLE001 - NATS may be the dependency that is down; the next change is told
            log.warning("could not publish the change of %s: %s", name, type(exc).__name__)

    async def run(self, interval_s: float) -> None:
        """A round every `interval_s` (from the start of one to the next) until cancelled."""
        while True:
            began = time.monotonic()
            try:
                await self.one_round()
            except Exception:  # noqa: BLE001 - a round that fails is logged; the next one runs
                log.exception("health round failed")
            await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - began)))
