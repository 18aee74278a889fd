"""Composition root of the notifier: channels from settings, Postgres, and the alert.> consumer."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
from faststream.asgi import AsgiFastStream

from services.notifier.channels import EmailChannel, SlackChannel, WebhookChannel
from services.notifier.notifier import Notifier
from services.notifier.pg_delivery_log import PgDeliveryLog
from shared.batch_consumer import BatchConsumer
from shared.bus import jetstream, make_broker, publish_dead_letter
from shared.events import Alert
from shared.logs import configure_logging
from shared.service_app import make_service_app
from shared.settings import Settings, get_settings, is_set
from shared.subjects import ALERTS, ensure_streams

SERVICE = "notifier"
DELIVERY_FAILED_SUBJECT = "alert"  # final delivery failures go to dlq.alert

log = logging.getLogger(__name__)


def build_channels(settings: Settings, http: httpx.AsyncClient) -> dict[str, Any]:
    """The channels whose settings are given; an empty value counts as not given."""
    channels: dict[str, Any] = {}
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


def create_app(settings: Settings | None = None) -> AsgiFastStream:
    settings = settings or get_settings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    config = settings.file_config()
    broker = make_broker(settings.nats_url, SERVICE)
    state: dict[str, Any] = {}

    async def postgres_ready() -> None:
        await state["pool"].fetchval("SELECT 1")

    app = make_service_app(broker, SERVICE, readiness=[("postgres", postgres_ready)])

    async def dead_letter(alerts: Sequence[Alert], channel: str, reason: str) -> None:
        for alert in alerts:
            await publish_dead_letter(jetstream(broker), DELIVERY_FAILED_SUBJECT, alert.model_dump_json().encode(),
                                      f"{channel} delivery failed: {reason}", SERVICE)

    @app.on_startup
    async def connect() -> None:
        await broker.connect()
        await ensure_streams(jetstream(broker))
        pool = await asyncpg.create_pool(settings.database_url, min_size=0, max_size=6)
        http = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=3.0))
        channels = build_channels(settings, http)
        log.info("notifier channels: %s", ", ".join(sorted(channels)) or "none configured")
        store = PgDeliveryLog(pool, timedelta(seconds=settings.notify_claim_lease_s),
                              timedelta(seconds=settings.notify_repeat_interval_s))
        state.update(pool=pool, http=http, notifier=Notifier(
            store, channels, config.routes, settings.notify_max_attempts, settings.notify_backoff_initial_s,
            settings.notify_backoff_max_s, dead_letter))

    @app.after_startup
    async def start_consumer() -> None:
        consumer = BatchConsumer(jetstream(broker), stream="ALERTS", subject=ALERTS, durable="notifier", model=Alert,
                                 store=state["notifier"].handle, service=SERVICE, batch_size=100,
                                 linger_s=settings.notify_group_window_s,
                                 ack_wait_s=settings.notify_claim_lease_s)
        await consumer.start()
        state["consumer"] = consumer

    @app.on_shutdown
    async def stop_consumer() -> None:
        if "consumer" in state:
            await state["consumer"].stop()

    @app.after_shutdown
    async def close() -> None:
        if "pool" in state:
            await state["pool"].close()
            await state["http"].aclose()

    return app
