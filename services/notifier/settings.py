"""What the notifier reads: its channels and delivery knobs from the environment, and its part of the
YAML file (the alert routes)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from services.notifier.routing import DEFAULT_ROUTES, Route
from shared.settings import FilePart, ServiceSettings


class NotifierConfig(FilePart):
    routes: list[Route] = Field(default_factory=lambda: list(DEFAULT_ROUTES),
                                description="First matching route wins; resolved alerts follow their original.")


class NotifierSettings(ServiceSettings):
    notifier_port: int = 3004

    slack_webhook_url: SecretStr | None = None
    alert_email: str | None = None
    alert_email_from: str = "costwarden@localhost"
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    smtp_timeout_s: float = 10.0
    smtp_ca_file: str | None = Field(default=None, description="CA bundle to verify the SMTP server (STARTTLS).")
    alert_webhook_url: SecretStr | None = None
    alert_webhook_secret: SecretStr | None = None

    notify_repeat_interval_s: float = 4 * 3600
    notify_claim_lease_s: float = 60.0
    notify_group_window_s: float = 2.0
    notify_max_attempts: int = 5
    notify_backoff_initial_s: float = 1.0
    notify_backoff_max_s: float = 20.0

    def file_config(self) -> NotifierConfig:
        return self.file_part(NotifierConfig)
