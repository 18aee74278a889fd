"""Subjects and JetStream streams, declared in one place.

Streams are created or updated only by `ensure_streams`, run by `costwarden migrate` (as the bus's
`admin` identity, the only one allowed to manage streams). Services only bind to them
(`bind_streams`, with the streams each one uses in STREAMS_BOUND): they wait for the streams they
use to exist and never change a stream's settings.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError, ServiceUnavailableError

from shared.backoff import retrying

T = TypeVar("T")

LLM_REQUEST = "llm.request"
LLM_COMPLETED = "llm.completed"
LIMIT_VIOLATION = "limit.violation"
COST_QUERY = "cost.query"
HEALTH_CHANGED = "health.changed"
SCHEDULE_BACKUP = "schedule.backup"
BACKUP_REQUESTED = "backup.requested"
BACKUP_COMPLETED = "backup.completed"
ALERTS = "alert.>"

LIMITER_QUEUE = "limiter"
COST_QUEUE = "cost"


def alert_subject(source: str, severity: str) -> str:
    return f"alert.{source}.{severity}"


def dead_letter_subject(subject: str) -> str:
    return f"dlq.{subject}"


DAY_S = 86_400


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    max_age_s: int
    duplicate_window_s: int = 120

    def config(self, replicas: int = 1) -> StreamConfig:
        return StreamConfig(
            name=self.name,
            subjects=list(self.subjects),
            storage=StorageType.FILE,
            max_age=self.max_age_s,
            duplicate_window=self.duplicate_window_s,
            num_replicas=replicas,
        )


STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec("LLM", (LLM_COMPLETED,), max_age_s=7 * DAY_S),
    StreamSpec("LIMITS", (LIMIT_VIOLATION,), max_age_s=7 * DAY_S),
    StreamSpec("ALERTS", (ALERTS,), max_age_s=7 * DAY_S),
    StreamSpec("SCHEDULE", ("schedule.>",), max_age_s=7 * DAY_S, duplicate_window_s=3600),
    StreamSpec("BACKUP", ("backup.>",), max_age_s=7 * DAY_S),
    StreamSpec("DLQ", ("dlq.>",), max_age_s=30 * DAY_S),
)


def _matches(pattern: str, subject: str) -> bool:
    """NATS subject matching, token by token: `*` is one token, a final `>` one or more."""
    wanted, given = pattern.split("."), subject.split(".")
    for i, token in enumerate(wanted):
        if token == ">":
            return len(given) > i
        if i >= len(given) or (token != "*" and token != given[i]):
            return False
    return len(given) == len(wanted)


@functools.lru_cache(maxsize=1024)
def stream_of(subject: str) -> str:
    """The stream that keeps `subject` (or a wildcard subject within one), from STREAMS: publishers and
    consumers name only their subject, so a stream is named in this one place."""
    for spec in STREAMS:
        if any(_matches(pattern, subject) for pattern in spec.subjects):
            return spec.name
    raise KeyError(f"no stream keeps {subject}")


def _streams(*subjects: str) -> tuple[str, ...]:
    return tuple(sorted({stream_of(subject) for subject in subjects}))


# The streams each role uses, which it binds at start; its bus permissions (services/deploy) let it
# look up exactly these.
STREAMS_BOUND: dict[str, tuple[str, ...]] = {
    "api": _streams(LLM_COMPLETED),
    "limiter": _streams(LLM_COMPLETED, LIMIT_VIOLATION, dead_letter_subject(LLM_REQUEST)),
    "cost": _streams(LLM_COMPLETED, ALERTS, dead_letter_subject(COST_QUERY)),
    "notifier": _streams(ALERTS, dead_letter_subject("alert")),
    "health": tuple(spec.name for spec in STREAMS),  # it watches every stream's backlog
    "backup": _streams(SCHEDULE_BACKUP, BACKUP_REQUESTED, ALERTS, dead_letter_subject(SCHEDULE_BACKUP)),
    "console": _streams(BACKUP_REQUESTED, dead_letter_subject(LLM_COMPLETED)),
}


def streams_bound_by(role: str) -> list[str]:
    return list(STREAMS_BOUND[role])


JETSTREAM_BUSY = (nats.errors.TimeoutError, nats.errors.NoRespondersError, ServiceUnavailableError)


async def with_jetstream_patience(operation: Callable[[], Awaitable[T]], patience_s: float,
                                  also: tuple[type[Exception], ...] = ()) -> T:
    """Ask JetStream again, backing off up to 2 s, for as long as it is busy (a cluster electing
    leaders answers nothing, or 503, for a while), then give up with its last error."""
    return await retrying(operation, (*JETSTREAM_BUSY, *also), initial_s=0.2, max_s=2.0, patience_s=patience_s)


async def ensure_streams(js: JetStreamContext, replicas: int = 1, patience_s: float = 60.0) -> None:
    """Create every stream that is missing and bring existing ones to these definitions, with `replicas`
    copies each (NATS_STREAM_REPLICAS; raised or lowered on streams that exist). Durable consumers keep
    as many replicas as their stream.

    A cluster that just lost a node answers nothing for the streams that node led until they have
    elected new leaders: a service starting then waits up to `patience_s` rather than exit."""
    await with_jetstream_patience(lambda: _ensure_streams(js, replicas), patience_s)


async def _ensure_streams(js: JetStreamContext, replicas: int) -> None:
    for spec in STREAMS:
        try:
            await js.stream_info(spec.name)
        except NotFoundError:
            await js.add_stream(spec.config(replicas))
        else:
            await js.update_stream(spec.config(replicas))


class StreamMissing(RuntimeError):
    pass


async def bind_streams(js: JetStreamContext, streams: Sequence[str], patience_s: float = 60.0) -> None:
    """Wait until every stream a service uses exists (created by `costwarden migrate`) and answers.

    A cluster electing new leaders, or a migration running at the same moment, answers nothing or
    "not found" for a while: a starting service waits up to `patience_s`, then exits with the reason."""
    async def look_up_all() -> None:
        for stream in streams:
            await js.stream_info(stream)

    try:
        await with_jetstream_patience(look_up_all, patience_s, also=(NotFoundError,))
    except NotFoundError as exc:
        raise StreamMissing(f"a JetStream stream of {', '.join(streams)} does not exist: run `costwarden migrate` "
                            "(as the NATS admin identity) before starting the services") from exc
