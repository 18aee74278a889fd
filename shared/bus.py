"""NATS wiring shared by every service: the broker factory, publishing events (with their id as
Nats-Msg-Id, so JetStream keeps one copy), dead letters and the dead-letter middleware.

FastStream is imported by the two functions that use it: the api, the console and the health service
use this module with nats-py alone, and importing FastStream is a good part of a process's start."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from nats.aio.client import Client as Nats
from nats.js import JetStreamContext
from prometheus_client import REGISTRY, CollectorRegistry
from pydantic import BaseModel, ValidationError

from shared.events import Alert, DeadLetter
from shared.settings import ServiceSettings
from shared.subjects import alert_subject, dead_letter_subject, stream_of

if TYPE_CHECKING:
    from faststream import BaseMiddleware
    from faststream.nats import NatsBroker

log = logging.getLogger(__name__)

GRACEFUL_TIMEOUT_S = 20.0


def describe_invalid(exc: Exception) -> str:
    """A short, secret-free reason for a dead letter."""
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()
        )[:2000]
    return f"{type(exc).__name__}: {exc}"[:2000]


def malformed_json_reason(body: bytes) -> str | None:
    try:
        json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return f"malformed JSON: {exc}"
    return None


async def publish_event(js: JetStreamContext, subject: str, event: BaseModel, msg_id: str | None = None,
                        timeout_s: float = 2.0) -> None:
    """Publish to the subject's stream and wait for its ack; `msg_id` de-duplicates re-publications."""
    await js.publish(subject, event.model_dump_json().encode(), stream=stream_of(subject),
                     headers={"Nats-Msg-Id": msg_id} if msg_id else None, timeout=timeout_s)


async def publish_alert(js: JetStreamContext, alert: Alert) -> None:
    """`alert.<source>.<severity>`, once per alert key (the key is the Nats-Msg-Id)."""
    await publish_event(js, alert_subject(alert.source, alert.severity), alert, alert.key)


async def publish_dead_letter(js: JetStreamContext, subject: str, payload: bytes, reason: str,
                              service: str) -> None:
    letter = DeadLetter(subject=subject, reason=reason, service=service,
                        payload=payload.decode("utf-8", errors="replace")[:64_000])
    await publish_event(js, dead_letter_subject(subject), letter)
    log.warning("dead-lettered a message on %s: %s", subject, reason)


def jetstream(broker: NatsBroker) -> JetStreamContext:
    """The JetStream context of a connected FastStream broker."""
    return broker.config.connection_state.stream


def nats_client(broker: NatsBroker) -> Nats:
    """The nats-py connection of a connected FastStream broker."""
    return broker.config.connection_state.connection


def dead_letter_middleware(service: str) -> type[BaseMiddleware]:
    """Send what a handler cannot parse or validate to `dlq.<subject>` and carry on.

    The message is then acknowledged: retrying a malformed event can never succeed. A request
    (a message with a reply subject) also gets a JSON error reply so that the caller does not wait.
    """
    from faststream import BaseMiddleware

    class DeadLetterMiddleware(BaseMiddleware):
        async def consume_scope(self, call_next: Any, msg: Any) -> Any:
            try:
                return await call_next(msg)
            except (ValidationError, json.JSONDecodeError, UnicodeDecodeError) as exc:
                reason = malformed_json_reason(msg.body) or describe_invalid(exc)
                broker = self.context.get("broker")
                await publish_dead_letter(jetstream(broker), msg.raw_message.subject, msg.body, reason, service)
                if msg.reply_to:
                    return {"error": "invalid request", "reason": reason}
                return None

    return DeadLetterMiddleware


def inbox_prefix(role: str) -> str:
    """Where a role's replies arrive: its own prefix, which no other role may read (services/deploy
    grants each role only its own)."""
    return f"_INBOX_{role}"


def nats_options(settings: ServiceSettings, role: str) -> dict[str, Any]:
    """How a role connects: the cluster's servers, its own inbox prefix (with authentication on, no
    role can read another's replies), its NKEY seed when one is configured, and endless reconnection."""
    options: dict[str, Any] = {"servers": settings.nats_servers, "name": f"costwarden-{role}",
                               "inbox_prefix": inbox_prefix(role), "max_reconnect_attempts": -1,
                               "reconnect_time_wait": 1}
    if settings.nats_nkey_seed_file:
        options["nkeys_seed"] = settings.nats_nkey_seed_file
    return options


def make_broker(settings: ServiceSettings, service: str, registry: CollectorRegistry = REGISTRY,
                **connection: Any) -> NatsBroker:
    """`connection`: more of nats-py's connect options (`reconnected_cb`)."""
    from faststream.nats import NatsBroker
    from faststream.nats.prometheus import NatsPrometheusMiddleware

    return NatsBroker(
        graceful_timeout=GRACEFUL_TIMEOUT_S,
        middlewares=(
            NatsPrometheusMiddleware(registry=registry, app_name=service),
            dead_letter_middleware(service),
        ),
        # Our logger, not FastStream's own (which has its own handler and format): its lines go through
        # the service's handler like every other line.
        logger=logging.getLogger(f"costwarden.{service}.bus"),
        log_level=logging.DEBUG,  # one line per message would swamp the logs on the hot path
        **nats_options(settings, service),
        **connection,
    )
