"""Who may do what on the bus: one NATS identity per role, each allowed exactly the subjects its work
needs. `costwarden nats-config` turns this table into a nats-server authorization block
(nats_identities.py).

Every role reads replies only under its own inbox prefix (`_INBOX_<role>`), so no role can read
another's replies; the two responders (limiter, cost) answer through `allow_responses`, which lets
them publish only to the reply subject of a request they received. Stream management (create, update,
delete) belongs to `admin` alone; a service may look up the streams it uses and create, read and
acknowledge its own durable consumers, no one else's.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.backup_requests import WORKER_DURABLE
from shared.bus import inbox_prefix
from shared.subjects import (
    ALERTS,
    BACKUP_COMPLETED,
    BACKUP_REQUESTED,
    COST_QUERY,
    HEALTH_CHANGED,
    LIMIT_VIOLATION,
    LLM_COMPLETED,
    LLM_REQUEST,
    SCHEDULE_BACKUP,
    STREAMS,
    dead_letter_subject,
    stream_of,
)

ROLES = ("api", "limiter", "cost", "notifier", "health", "backup", "console", "upstream", "admin")


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    responds: bool = False  # may answer the requests it receives (nats-server's allow_responses)


def stream_lookup(*subjects: str) -> tuple[str, ...]:
    """Reading the definition of the streams holding these subjects (binding to them)."""
    return tuple(f"$JS.API.STREAM.INFO.{stream_of(subject)}" for subject in subjects)


def durable(subject: str, name: str) -> tuple[str, ...]:
    """Creating, reading, pulling from and acknowledging one's own durable consumer."""
    stream = stream_of(subject)
    return (f"$JS.API.CONSUMER.INFO.{stream}.{name}", f"$JS.API.CONSUMER.CREATE.{stream}.{name}",
            f"$JS.API.CONSUMER.CREATE.{stream}.{name}.>", f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{name}",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}", f"$JS.ACK.{stream}.{name}.>")


def dead_letters(*subjects: str) -> tuple[str, ...]:
    return (*(dead_letter_subject(subject) for subject in subjects), *stream_lookup(dead_letter_subject(subjects[0])))


def own_inbox(role: str, *subjects: str) -> tuple[str, ...]:
    return (*subjects, f"{inbox_prefix(role)}.>")


PERMISSIONS: dict[str, Permissions] = {
    "api": Permissions(
        publish=(LLM_REQUEST, COST_QUERY, LLM_COMPLETED, *stream_lookup(LLM_COMPLETED)),
        subscribe=own_inbox("api")),
    "limiter": Permissions(
        publish=(LIMIT_VIOLATION, *stream_lookup(LLM_COMPLETED, LIMIT_VIOLATION),
                 *durable(LLM_COMPLETED, "limiter-settlement"), *durable(LIMIT_VIOLATION, "limiter-violations"),
                 *dead_letters(LLM_REQUEST, LLM_COMPLETED, LIMIT_VIOLATION)),
        subscribe=own_inbox("limiter", LLM_REQUEST), responds=True),
    "cost": Permissions(
        publish=("alert.cost.*", *stream_lookup(LLM_COMPLETED, ALERTS),
                 *durable(LLM_COMPLETED, "cost-ledger"), *dead_letters(LLM_COMPLETED, COST_QUERY)),
        subscribe=own_inbox("cost", COST_QUERY), responds=True),
    "notifier": Permissions(
        publish=(*stream_lookup(ALERTS), *durable(ALERTS, "notifier"),
                 *dead_letters("alert", "alert.*.*")),
        subscribe=own_inbox("notifier")),
    "health": Permissions(
        publish=(HEALTH_CHANGED, "alert.health.*", "$JS.API.INFO", "$JS.API.STREAM.INFO.*",
                 "$JS.API.CONSUMER.LIST.*"),
        subscribe=own_inbox("health")),
    "backup": Permissions(
        publish=(SCHEDULE_BACKUP, BACKUP_COMPLETED, "alert.backup.*",
                 *stream_lookup(SCHEDULE_BACKUP, BACKUP_REQUESTED, ALERTS),
                 *durable(SCHEDULE_BACKUP, "backup-schedule"), *durable(BACKUP_REQUESTED, WORKER_DURABLE),
                 *dead_letters(SCHEDULE_BACKUP, BACKUP_REQUESTED)),
        subscribe=own_inbox("backup")),
    "console": Permissions(
        publish=(BACKUP_REQUESTED, *stream_lookup(BACKUP_REQUESTED, dead_letter_subject(LLM_COMPLETED)),
                 f"$JS.API.CONSUMER.INFO.{stream_of(BACKUP_REQUESTED)}.{WORKER_DURABLE}"),
        subscribe=own_inbox("console")),
    "upstream": Permissions(publish=(LLM_REQUEST, LLM_COMPLETED), subscribe=own_inbox("upstream")),
    "admin": Permissions(publish=(">",), subscribe=(">",)),
}


def streams_looked_up(role: str) -> list[str]:
    """The streams a role may look up (each service binds those of shared/subjects.py's STREAMS_BOUND)."""
    lookups = [subject.removeprefix("$JS.API.STREAM.INFO.") for subject in PERMISSIONS[role].publish
               if subject.startswith("$JS.API.STREAM.INFO.")]
    if "*" in lookups:
        return [spec.name for spec in STREAMS]
    return sorted(set(lookups))
