"""Delivery channels: Slack incoming webhook, SMTP email and a signed JSON webhook.

Each `send` either returns (delivered) or raises DeliveryFailed with a secret-free reason, whether a
retry can help, and how long the receiver asked us to wait.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiosmtplib
import httpx
from pydantic import SecretStr

from services.notifier.messages import email_message, sign, slack_payload, webhook_body
from shared.events import Alert


@dataclass
class DeliveryFailed(Exception):
    reason: str
    retryable: bool
    retry_after_s: float | None = None

    def __str__(self) -> str:
        return self.reason


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


class EmailChannel:
    """SMTP: 4xx replies are temporary (retried), 5xx permanent (not)."""

    name = "email"

    def __init__(self, host: str, port: int, sender: str, recipient: str, username: str | None,
                 password: SecretStr | None, starttls: bool, timeout_s: float, ca_file: str | None = None) -> None:
        self.host, self.port, self.sender, self.recipient = host, port, sender, recipient
        self.username, self.password, self.starttls, self.timeout_s = username, password, starttls, timeout_s
        self.ca_file = ca_file

    async def send(self, alerts: Sequence[Alert]) -> None:
        message = email_message(alerts, self.sender, self.recipient)
        try:
            await aiosmtplib.send(
                message, hostname=self.host, port=self.port, start_tls=self.starttls, timeout=self.timeout_s,
                cert_bundle=self.ca_file,
                username=self.username, password=self.password.get_secret_value() if self.password else None,
            )
        except aiosmtplib.SMTPResponseException as exc:
            raise DeliveryFailed(f"SMTP {exc.code} {exc.message}"[:300], retryable=400 <= exc.code < 500) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise DeliveryFailed(f"SMTP {type(exc).__name__}: {exc}"[:300], retryable=True) from None
