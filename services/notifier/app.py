"""Composition root of the notifier: channels from settings, Postgres, and the alert.> consumer."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

import asyncpg
import httpx
from faststream.asgi import AsgiFastStream
from faststream.nats import NatsBroker

from services.notifier.httpx_channels import SlackChannel, WebhookChannel
from services.notifier.notifier import Channel, Notifier
from services.notifier.pg_delivery_log import PgDeliveryLog
from services.notifier.settings import NotifierConfig, NotifierSettings
from services.notifier.smtp_email_channel import EmailChannel
from shared.batch_consumer import BatchConsumer
from shared.bus import jetstream, make_broker, publish_dead_letter
from shared.events import Alert
from shared.logs import configure_logging
from shared.service_app import lifecycle_app
from shared.settings import is_set
from shared.subjects import ALERTS, bind_streams, streams_bound_by

SERVICE = "notifier"
DELIVERY_FAILED_SUBJECT = "alert"  # final delivery failures go to dlq.alert

log = logging.getLogger(__name__)


def build_channels(settings: NotifierSettings, http: httpx.AsyncClient) -> dict[str, Channel]:
    """The channels whose settings are given; an empty value counts as not given."""
    channels: dict[str, Channel] = {}
    if is_set(settings.slack_webhook_url):
        channels["slack"] = SlackChannel(settings.slack_webhook_url, http)
    if settings.smtp_host and settings.alert_email:
        channels["email"] = EmailChannel(settings.smtp_host, settings.smtp_port, settings.alert_email_from,
                                         settings.alert_email, settings.smtp_username, settings.smtp_password,
                                         settings.smtp_starttls, settings.smtp_timeout_s, settings.smtp_ca_file)
    if is_set(settings.alert_webhook_url):
        secret = settings.alert_webhook_secret if is_set(settings.alert_webhook_secret) else None
        channels["webhook"] = WebhookChannel(settings.alert_webhook_url, secret, http)
    return channels


class NotifierService:
    """The service's resources, opened at start-up and closed at shutdown in reverse order."""

    def __init__(self, settings: NotifierSettings, config: NotifierConfig, broker: NatsBroker) -> None:
        self.settings = settings
        self.config = config
        self.broker = broker
        self.pool: asyncpg.Pool | None = None
        self.http: httpx.AsyncClient | None = None
        self.notifier: Notifier | None = None
        self.consumer: BatchConsumer | None = None

    async def dead_letter(self, alerts: Sequence[Alert], channel: str, reason: str) -> None:
        for alert in alerts:
            await publish_dead_letter(jetstream(self.broker), DELIVERY_FAILED_SUBJECT, alert.model_dump_json().encode(),
                                      f"{channel} delivery failed: {reason}", SERVICE)

    async def connect(self) -> None:
        settings = self.settings
        await self.broker.connect()
        await bind_streams(jetstream(self.broker), streams_bound_by(SERVICE))
        self.pool = await asyncpg.create_pool(settings.database_url, min_size=0, max_size=6)
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=3.0))
        channels = build_channels(settings, self.http)
        log.info("notifier channels: %s", ", ".join(sorted(channels)) or "none configured")
        store = PgDeliveryLog(self.pool, timedelta(seconds=settings.notify_claim_lease_s),
                              timedelta(seconds=settings.notify_repeat_interval_s))
        self.notifier = Notifier(store, channels, self.config.routes, settings.notify_max_attempts,
                                 settings.notify_backoff_initial_s, settings.notify_backoff_max_s, self.dead_letter)

    async def start(self) -> None:
        assert self.notifier is not None
        self.consumer = BatchConsumer(jetstream(self.broker), subject=ALERTS, durable="notifier",
                                      model=Alert, store=self.notifier.handle, service=SERVICE, batch_size=100,
                                      linger_s=self.settings.notify_group_window_s,
                                      ack_wait_s=self.settings.notify_claim_lease_s)
        await self.consumer.start()

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
        if self.http is not None:
            await self.http.aclose()

    async def postgres_ready(self) -> None:
        assert self.pool is not None
        await self.pool.fetchval("SELECT 1")


def create_app(settings: NotifierSettings | None = None) -> AsgiFastStream:
    settings = settings or NotifierSettings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    service = NotifierService(settings, settings.file_config(), make_broker(settings, SERVICE))
    return lifecycle_app(service, SERVICE, readiness=[("postgres", service.postgres_ready)])
