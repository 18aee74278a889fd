"""Delivery channels over HTTP (httpx): a Slack incoming webhook and a signed JSON webhook. Each
`send` returns (delivered) or raises the use case's DeliveryFailed."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence

import httpx
from pydantic import SecretStr

from services.notifier.messages import sign, slack_payload, webhook_body
from services.notifier.notifier import DeliveryFailed
from shared.events import Alert


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.replace(".", "", 1).isdigit() else None


async def _post(http: httpx.AsyncClient, url: str, content: bytes, headers: dict[str, str]) -> None:
    """POST and classify the outcome. Errors name the status or exception type only: the URL itself
    (a Slack webhook URL is a credential) must never reach a log or the deliveries table."""
    try:
        response = await http.post(url, content=content, headers=headers)
    except httpx.TimeoutException:
        raise DeliveryFailed("timed out", retryable=True) from None
    except httpx.TransportError as exc:
        raise DeliveryFailed(f"connection failed ({type(exc).__name__})", retryable=True) from None
    if response.status_code < 300:
        return
    retryable = response.status_code == 429 or response.status_code >= 500
    raise DeliveryFailed(f"HTTP {response.status_code}", retryable, _retry_after(response))


class SlackChannel:
    """Slack allows about one message a second per webhook: sends are spaced at least that far."""

    name = "slack"

    def __init__(self, webhook_url: SecretStr, http: httpx.AsyncClient, min_interval_s: float = 1.0) -> None:
        self.url = webhook_url
        self.http = http
        self.min_interval_s = min_interval_s
        self._lock = asyncio.Lock()
        self._last = 0.0

    async def send(self, alerts: Sequence[Alert]) -> None:
        body = json.dumps(slack_payload(alerts)).encode()
        async with self._lock:
            wait = self._last + self.min_interval_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                await _post(self.http, self.url.get_secret_value(), body, {"content-type": "application/json"})
            finally:
                self._last = time.monotonic()


class WebhookChannel:
    name = "webhook"

    def __init__(self, url: SecretStr, secret: SecretStr | None, http: httpx.AsyncClient) -> None:
        self.url = url
        self.secret = secret
        self.http = http

    async def send(self, alerts: Sequence[Alert]) -> None:
        body = webhook_body(alerts)
        timestamp = str(int(time.time()))
        headers = {"content-type": "application/json", "X-Costwarden-Timestamp": timestamp,
                   "Idempotency-Key": ",".join(a.key for a in alerts)[:1000]}
        if self.secret is not None:
            secret = self.secret.get_secret_value().encode()
            headers["X-Costwarden-Signature"] = "sha256=" + sign(secret, timestamp, body)
        await _post(self.http, self.url.get_secret_value(), body, headers)
