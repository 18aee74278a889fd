"""The AsyncAPI 3.0 document of the bus: every subject of the contract with its messages, built from the
event models (shared/events.py, shared/cost_query.py) and the subjects and streams (shared/subjects.py),
never written by hand.

The document describes costwarden as one application: `receive` is what it takes from others (an
upstream service asks `llm.request` and publishes `llm.completed`), `send` what it publishes. Payloads
that costwarden receives are given as it validates them, payloads it sends as it serializes them.

`python -m shared.asyncapi` writes docs/asyncapi.yaml; `--check` exits 1 when the file differs from
what the models say (the tests run the same comparison).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from shared.cost_query import Analytics, CostQuery, CurrentCost
from shared.events import (
    SCHEMA_VERSION,
    Alert,
    BackupCompleted,
    BackupRequested,
    BackupTick,
    DeadLetter,
    HealthChanged,
    LimitDecision,
    LimitRequest,
    LimitViolation,
    LlmCompleted,
)
from shared.subjects import (
    BACKUP_COMPLETED,
    BACKUP_REQUESTED,
    COST_QUERY,
    COST_QUEUE,
    HEALTH_CHANGED,
    LIMIT_VIOLATION,
    LIMITER_QUEUE,
    LLM_COMPLETED,
    LLM_REQUEST,
    SCHEDULE_BACKUP,
    STREAMS,
    alert_subject,
    dead_letter_subject,
    stream_of,
)

DOCUMENT_PATH = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.yaml"
ASYNCAPI_VERSION = "3.0.0"
NATS_BINDING_VERSION = "0.1.0"

Action = Literal["send", "receive"]


class InvalidRequest(BaseModel):
    """The answer to a request on `llm.request` or `cost.query` that cannot be parsed or validated; the
    request also goes to `dlq.<subject>` with the same reason."""

    error: Literal["invalid request"]
    reason: str = Field(description="What is wrong, field by field.")


@dataclass(frozen=True)
class Channel:
    """One subject: what travels on it, who publishes it, and what JetStream keeps of it."""

    id: str
    address: str | None
    messages: tuple[type[BaseModel], ...]
    actions: tuple[Action, ...]
    description: str
    msg_id: str | None = None  # what the Nats-Msg-Id header carries, when the publisher sets one
    queue: str | None = None  # the queue group its consumers share
    replies: tuple[type[BaseModel], ...] = ()
    parameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    example: str | None = None  # one concrete subject of an address with parameters

    @property
    def mode(self) -> JsonSchemaMode:
        """Its payloads as costwarden serializes them, or, for what others send, as it validates them."""
        return "serialization" if "send" in self.actions else "validation"

    @property
    def reply_id(self) -> str:
        return f"{self.id}.reply"


def _choices(model: type[BaseModel], name: str) -> list[str]:
    return list(typing.get_args(model.model_fields[name].annotation))


CHANNELS: tuple[Channel, ...] = (
    Channel(LLM_REQUEST, LLM_REQUEST, (LimitRequest,), ("receive",),
            "Asked before a provider is called: the limiter admits or denies the call and, when it admits "
            "it, reserves its worst case (tokens and dollars) until the call's `llm.completed` settles it. "
            "Any limiter replica answers.",
            queue=LIMITER_QUEUE, replies=(LimitDecision, InvalidRequest)),
    Channel(LLM_COMPLETED, LLM_COMPLETED, (LlmCompleted,), ("receive",),
            "Published after every provider call, success or failure, with the same `request_id` as its "
            "`llm.request`: the cost service prices it into the ledger, the limiter settles its "
            "reservation. A call left unrecorded keeps its reservation until it expires.",
            msg_id="The call's `request_id`: a re-publication within the stream's duplicate window is "
                   "dropped, and the cost service is idempotent on `request_id` beyond it."),
    Channel(LIMIT_VIOLATION, LIMIT_VIOLATION, (LimitViolation,), ("send",),
            "One per denial on `llm.request`.", msg_id="The violation's `id`."),
    Channel(COST_QUERY, COST_QUERY, (CostQuery,), ("receive",),
            "Current spend, or analytics over a time range; any cost replica answers. Money is sent as "
            "decimal strings.",
            queue=COST_QUEUE, replies=(CurrentCost, Analytics, InvalidRequest)),
    Channel(HEALTH_CHANGED, HEALTH_CHANGED, (HealthChanged,), ("send",),
            "Whenever a dependency's status changes (core NATS: not kept)."),
    Channel("alert", alert_subject("{source}", "{severity}"), (Alert,), ("send",),
            "Cost, health and backup alerts, each once per condition and window.",
            msg_id="The alert's `key`.",
            parameters={"source": {"enum": _choices(Alert, "source"), "description": "Who raised the alert."},
                        "severity": {"enum": _choices(Alert, "severity"), "description": "How bad it is."}},
            example=alert_subject("cost", "critical")),
    Channel(SCHEDULE_BACKUP, SCHEDULE_BACKUP, (BackupTick,), ("send", "receive"),
            "One tick per cron slot of the backup schedule, whichever scheduler replica publishes it.",
            msg_id="`backup:<slot>`: several scheduler replicas trigger one slot once."),
    Channel(BACKUP_REQUESTED, BACKUP_REQUESTED, (BackupRequested,), ("receive",),
            "A backup asked for now (`costwarden backup run`, the console).", msg_id="The request's `id`."),
    Channel(BACKUP_COMPLETED, BACKUP_COMPLETED, (BackupCompleted,), ("send",),
            "After each backup that was uploaded and verified."),
    Channel("dlq", dead_letter_subject("{subject}"), (DeadLetter,), ("send",),
            "Anything a service could not parse or validate, with the reason; the service goes on.",
            parameters={"subject": {"description": "The subject the message came on, dots included "
                                                   "(`dlq.llm.completed`)."}},
            example=dead_letter_subject(LLM_COMPLETED)),
)


def _delivery(channel: Channel) -> str:
    """How a subject travels: the JetStream stream that keeps it (from shared/subjects.py), or core NATS."""
    try:
        name = stream_of(channel.example or channel.address or "")
    except KeyError:
        return "Core NATS" + (" request-reply" if channel.replies else "") + "."
    stream = next(spec for spec in STREAMS if spec.name == name)
    window = stream.duplicate_window_s
    return (f"JetStream stream `{stream.name}` (kept {stream.max_age_s // 86_400} days, duplicate window "
            f"{window // 60} minutes): publish and wait for the stream's acknowledgement.")


def _message_id(model: type[BaseModel]) -> str:
    return model.__name__[0].lower() + model.__name__[1:]


def _message_refs(models: Sequence[type[BaseModel]]) -> dict[str, Any]:
    return {_message_id(model): {"$ref": f"#/components/messages/{_message_id(model)}"} for model in models}


def _message(model: type[BaseModel], schema_ref: str, msg_id: str | None) -> dict[str, Any]:
    message: dict[str, Any] = {"name": model.__name__, "title": model.__name__,
                               "summary": " ".join((model.__doc__ or "").split("\n\n")[0].split()),
                               "contentType": "application/json", "payload": {"$ref": schema_ref}}
    if msg_id:
        message["headers"] = {"type": "object", "required": ["Nats-Msg-Id"], "properties": {
            "Nats-Msg-Id": {"type": "string", "description": msg_id}}}
    return message


def _schemas() -> tuple[dict[tuple[type[BaseModel], JsonSchemaMode], str], dict[str, Any]]:
    """Every payload's JSON schema, each model once per mode, definitions under components/schemas."""
    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {}
    for channel in CHANNELS:
        for model in channel.messages:
            wanted[(model, channel.mode)] = None
        for model in channel.replies:
            wanted[(model, "serialization")] = None
    keys, schema = models_json_schema(list(wanted), ref_template="#/components/schemas/{model}")
    return {key: keys[key]["$ref"] for key in wanted}, _reflowed(schema.get("$defs", {}))


def _paragraphs(text: str) -> str:
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in text.split("\n\n"))


def _reflowed(node: Any) -> Any:
    """Descriptions as paragraphs of one line each (docstrings are wrapped at 120 columns)."""
    if isinstance(node, dict):
        return {key: _paragraphs(value) if key == "description" and isinstance(value, str) else _reflowed(value)
                for key, value in node.items()}
    if isinstance(node, list):
        return [_reflowed(item) for item in node]
    return node


def _operation(channel: Channel, action: Action, messages: Sequence[type[BaseModel]]) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "action": action, "channel": {"$ref": f"#/channels/{channel.id}"},
        "messages": [{"$ref": f"#/channels/{channel.id}/messages/{_message_id(m)}"} for m in messages],
    }
    if channel.queue:
        operation["bindings"] = {"nats": {"queue": channel.queue, "bindingVersion": NATS_BINDING_VERSION}}
    if channel.replies and action == "receive":
        operation["reply"] = {
            "channel": {"$ref": f"#/channels/{channel.reply_id}"},
            "messages": [{"$ref": f"#/channels/{channel.reply_id}/messages/{_message_id(m)}"}
                         for m in channel.replies]}
    return operation


@functools.cache
def asyncapi_document() -> dict[str, Any]:
    """The whole document, as plain JSON-compatible data."""
    refs, schemas = _schemas()
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for channel in CHANNELS:
        for model in channel.messages:
            messages[_message_id(model)] = _message(model, refs[(model, channel.mode)], channel.msg_id)
        for model in channel.replies:
            messages[_message_id(model)] = _message(model, refs[(model, "serialization")], None)
        channels[channel.id] = {
            "address": channel.address, "title": channel.address,
            "description": f"{channel.description} {_delivery(channel)}",
            "messages": _message_refs(channel.messages),
            **({"parameters": channel.parameters} if channel.parameters else {}),
        }
        if channel.replies:
            channels[channel.reply_id] = {
                "address": None, "title": f"reply to {channel.address}",
                "description": "The requester's inbox: the reply subject NATS gives the request. Each NATS "
                               "identity reads replies under its own inbox prefix (`_INBOX_<role>`).",
                "messages": _message_refs(channel.replies)}
        for action in channel.actions:
            name = ("answer" if channel.replies else "consume" if action == "receive" else "publish")
            operations[name + "".join(part.capitalize() for part in channel.id.split("."))] = \
                _operation(channel, action, channel.messages)
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "costwarden bus",
            "version": str(SCHEMA_VERSION),
            "description": (
                "The events between costwarden's services, and the interface for upstream services that "
                "call LLM providers themselves: ask `llm.request` before the call, publish `llm.completed` "
                "after it (docs/upstream.md). Every event is JSON with `schema_version`, a unique `id` and "
                "`occurred_at` in UTC. Generated from shared/events.py, shared/cost_query.py and "
                "shared/subjects.py by `python -m shared.asyncapi`."),
        },
        "defaultContentType": "application/json",
        "servers": {"local": {"host": "localhost:4222", "protocol": "nats", "description": (
            "NATS with JetStream. With authentication on, each role connects with its own NKEY seed and "
            "may use only its subjects; an upstream service uses the `upstream` identity (llm.request, "
            "llm.completed, replies under `_INBOX_upstream`).")}},
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }


def asyncapi_yaml() -> str:
    header = "# Generated by `python -m shared.asyncapi` from the event models: do not edit by hand.\n"
    return header + yaml.safe_dump(asyncapi_document(), sort_keys=False, allow_unicode=True, width=110)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.asyncapi", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file differs from the models")
    parser.add_argument("--json", action="store_true", help="print the document as JSON and write nothing")
    parser.add_argument("--out", type=Path, default=DOCUMENT_PATH)
    args = parser.parse_args(argv)
    if args.json:
        print(json.dumps(asyncapi_document(), indent=2))
        return 0
    text = asyncapi_yaml()
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date: run `python -m shared.asyncapi`", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
