"""Email over SMTP (aiosmtplib): `send` returns (delivered) or raises the use case's DeliveryFailed."""

from __future__ import annotations

from collections.abc import Sequence

import aiosmtplib
from pydantic import SecretStr

from services.notifier.messages import email_message
from services.notifier.notifier import DeliveryFailed
from shared.events import Alert


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
