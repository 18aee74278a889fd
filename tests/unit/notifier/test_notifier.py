"""The notifier use case with in-memory fakes of its ports: claims, routing, digests, retries, dead letters."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from services.notifier.notifier import DeliveryFailed, DeliveryInProgress, Notifier
from services.notifier.routing import DEFAULT_ROUTES
from shared.events import Alert


class FakeLog:
    def __init__(self, busy: set[tuple[str, str]] | None = None) -> None:
        self.claims: dict[tuple[str, str], str] = {key: "sending" for key in busy or ()}
        self.attempts: list[tuple[str, str, int, str]] = []

    async def claim(self, alert_key: str, channel: str):
        state = self.claims.get((alert_key, channel))
        if state is None:
            self.claims[(alert_key, channel)] = "sending"
            return "claimed"
        return "busy" if state == "sending" else "done"

    async def finish(self, alerts: Sequence[Alert], channel: str, status: str) -> None:
        for alert in alerts:
            self.claims[(alert.key, channel)] = status

    async def record(self, alerts: Sequence[Alert], channel: str, attempt: int, status: str,
                     error: str | None) -> None:
        self.attempts.extend((a.key, channel, attempt, status) for a in alerts)

    async def channels_that_got(self, alert_key: str) -> list[str]:
        return sorted({c for key, c, _, status in self.attempts if key == alert_key and status == "sent"})


class FakeChannel:
    def __init__(self, name: str, failures: list[DeliveryFailed] | None = None) -> None:
        self.name = name
        self.failures = list(failures or [])
        self.sent: list[list[str]] = []

    async def send(self, alerts: Sequence[Alert]) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append([a.key for a in alerts])


def alert(key: str, severity: str = "warning", **extra) -> Alert:
    return Alert(key=key, source="cost", severity=severity, title="t", text="x", **extra)


def notifier(log: FakeLog, *channels: FakeChannel, dead: list | None = None) -> Notifier:
    async def dead_letter(alerts: Sequence[Alert], channel: str, reason: str) -> None:
        if dead is not None:
            dead.append(([a.key for a in alerts], channel, reason))

    return Notifier(log, {c.name: c for c in channels}, DEFAULT_ROUTES, max_attempts=3, backoff_initial_s=0,
                    backoff_max_s=0, dead_letter=dead_letter)


async def test_a_burst_goes_out_as_one_digest_per_routed_channel_and_never_twice():
    log, slack, email, hook = FakeLog(), FakeChannel("slack"), FakeChannel("email"), FakeChannel("webhook")
    n = notifier(log, slack, email, hook)
    await n.handle([alert("a"), alert("b"), alert("c", "critical")])
    assert slack.sent == [["a", "b", "c"]] and hook.sent == [["a", "b", "c"]] and email.sent == [["c"]]
    await n.handle([alert("a")])  # redelivered: already delivered within the repeat interval
    assert slack.sent == [["a", "b", "c"]]


async def test_a_resolved_alert_follows_the_one_it_resolves():
    log, slack, email, hook = FakeLog(), FakeChannel("slack"), FakeChannel("email"), FakeChannel("webhook")
    n = notifier(log, slack, email, hook)
    await n.handle([alert("down", "critical")])
    await n.handle([alert("up", "resolved", resolves="down")])
    assert [s for s in email.sent] == [["down"], ["up"]]


async def test_retryable_failures_are_retried_and_the_last_one_is_dead_lettered():
    dead: list = []
    flaky = FakeChannel("slack", [DeliveryFailed("HTTP 503", True), DeliveryFailed("HTTP 429", True, 0)])
    log = FakeLog()
    await notifier(log, flaky, FakeChannel("webhook"), dead=dead).handle([alert("a")])
    assert flaky.sent == [["a"]] and [a[3] for a in log.attempts if a[1] == "slack"] == ["retrying", "retrying",
                                                                                           "sent"]
    broken = FakeChannel("slack", [DeliveryFailed("HTTP 404", False)])
    await notifier(FakeLog(), broken, FakeChannel("webhook"), dead=dead).handle([alert("b")])
    assert broken.sent == [] and dead == [(["b"], "slack", "HTTP 404")]


async def test_an_alert_held_by_a_live_claim_comes_back_later():
    with pytest.raises(DeliveryInProgress):
        await notifier(FakeLog(busy={("a", "slack")}), FakeChannel("slack"), FakeChannel("webhook")).handle(
            [alert("a")])
