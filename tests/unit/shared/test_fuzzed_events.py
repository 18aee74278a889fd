"""Fuzzed bus input (hypothesis): arbitrary and mutated JSON, and raw bytes, never crash an event model or
a bus handler; what is invalid is dead-lettered with a reason, acknowledged, and never reaches the store
(so no ledger row or counter changes); what is valid reaches it once."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from services.cost.rollups import price_events, rollup_deltas
from shared.batch_consumer import BatchConsumer
from shared.cost_query import CostQuery
from shared.events import (
    Alert,
    BackupRequested,
    BackupTick,
    LimitRequest,
    LimitViolation,
    LlmCompleted,
)
from shared.pricing import PriceCatalog
from shared.request_responder import RequestResponder

VALID: dict[type[BaseModel], dict[str, Any]] = {
    LlmCompleted: {"request_id": "r1", "provider": "together_ai", "model": "gpt-4o-mini", "prompt_tokens": 10,
                   "completion_tokens": 5, "endpoint": "/v1/chat/completions", "success": True, "latency_ms": 3,
                   "tags": {"feature": "search"}},
    LimitRequest: {"request_id": "r1", "user_id": "ann", "tier": "pro", "model": "gpt-4o-mini", "max_tokens": 8},
    LimitViolation: {"request_id": "r1", "tier": "free", "endpoint": "/v1/chat/completions", "policy": "standard",
                     "limited_by": "requests", "limit": 10, "window_s": 3600},
    Alert: {"key": "cost:all:hour:w:warning", "source": "cost", "severity": "warning", "title": "t", "text": "x"},
    BackupRequested: {"restore_test": False},
    BackupTick: {"slot": "2026-11-28T02:00"},
    CostQuery: {"kind": "current", "user_id": "ann"},
}
CONSUMED = [("llm.completed", LlmCompleted), ("limit.violation", LimitViolation), ("alert.cost.warning", Alert),
            ("backup.requested", BackupRequested), ("schedule.backup", BackupTick)]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12)


@st.composite
def mutated(draw, model: type[BaseModel]) -> bytes:
    """A valid event with one field removed, replaced by any JSON value or a number out of range, or one
    unknown field added;
    or a prefix of its bytes (a message cut short); or bytes of no JSON at all."""
    event = dict(VALID[model])
    how = draw(st.sampled_from(["drop", "replace", "extreme", "add", "truncate", "garbage", "any json"]))
    numbers = sorted(k for k, v in event.items() if isinstance(v, int) and not isinstance(v, bool))
    if how == "extreme" and numbers:  # counts and sizes at and past the limits of what stores them
        event[draw(st.sampled_from(numbers))] = draw(st.sampled_from([-1, 2**31 - 1, 2**31, 2**53, 2**63, 10**30])
                                                     | st.integers())
    elif how == "drop" and event:
        event.pop(draw(st.sampled_from(sorted(event))))
    elif how == "replace" and event:
        event[draw(st.sampled_from(sorted(event)))] = draw(json_values)
    elif how == "add":
        event[draw(st.text(max_size=12))] = draw(json_values)
    elif how == "truncate":
        raw = json.dumps(event).encode()
        return raw[:draw(st.integers(0, len(raw) - 1))]
    elif how == "garbage":
        return draw(st.binary(max_size=64))
    elif how == "any json":
        return json.dumps(draw(json_values)).encode()
    return json.dumps(event).encode()


def parse(model: type[BaseModel], data: bytes) -> BaseModel | None:
    try:
        return model.model_validate_json(data)
    except ValidationError:
        return None  # the only failure allowed: anything else would crash the handler


@pytest.mark.parametrize("model", list(VALID), ids=lambda m: m.__name__)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_model_parses_or_refuses_with_a_validation_error(model, data):
    parse(model, data.draw(mutated(model)))


@given(data=st.data())
@settings(max_examples=300, deadline=None)
def test_any_valid_completion_is_priced_and_rolled_up(data):
    raw = data.draw(mutated(LlmCompleted))
    event = parse(LlmCompleted, raw)
    if event is None:
        return
    [record] = price_events([event], PriceCatalog.with_overrides({}))
    assert record.cost >= 0 and record.cost < Decimal(10) ** 10  # fits llm_usage.cost numeric(20, 10)
    assert event.prompt_tokens + event.completion_tokens < 2**31  # fits the ledger's integer total
    assert rollup_deltas([record])


class FakeMsg:
    def __init__(self, subject: str, data: bytes, reply: str | None = None) -> None:
        self.subject, self.data, self.reply = subject, data, reply
        self.acked = self.naked = 0

    async def ack(self) -> None:
        self.acked += 1

    async def nak(self, delay: float | None = None) -> None:
        self.naked += 1

    async def in_progress(self) -> None: ...


class FakeJetStream:
    def __init__(self) -> None:
        self.published: list[tuple[str, dict]] = []

    async def publish(self, subject: str, payload: bytes, **_: Any) -> None:
        self.published.append((subject, json.loads(payload)))


class FakeNats:
    def __init__(self) -> None:
        self.replies: list[tuple[str, dict]] = []

    async def publish(self, subject: str, payload: bytes) -> None:
        self.replies.append((subject, json.loads(payload)))


@pytest.mark.parametrize(("subject", "model"), CONSUMED, ids=[s for s, _ in CONSUMED])
@settings(max_examples=100, deadline=None)
@given(data=st.data())
async def test_a_consumer_dead_letters_what_it_cannot_read_and_stores_only_the_rest(subject, model, data):
    raw = data.draw(mutated(model))
    stored: list[Any] = []

    async def store(events: list[Any]) -> None:
        stored.extend(events)

    js = FakeJetStream()
    consumer = BatchConsumer(js, subject=subject, durable="fuzz", model=model, store=store, service="fuzz")
    msg = FakeMsg(subject, raw)
    await consumer._handle([msg])
    assert msg.acked == 1 and msg.naked == 0
    if parse(model, raw) is None:
        assert stored == []
        [(letter_subject, letter)] = js.published
        assert letter_subject == f"dlq.{subject}" and letter["reason"] and letter["service"] == "fuzz"
    else:
        assert len(stored) == 1 and js.published == []


@settings(max_examples=150, deadline=None)
@given(data=st.data())
async def test_the_limiter_responder_answers_every_request_and_decides_only_valid_ones(data):
    raw = data.draw(mutated(LimitRequest))
    decided: list[LimitRequest] = []

    async def decide(request: LimitRequest) -> LimitRequest:
        decided.append(request)
        return request

    nc, js = FakeNats(), FakeJetStream()
    responder = RequestResponder(nc, js, subject="llm.request", queue="limiter", model=LimitRequest, handle=decide,
                                 service="fuzz", max_in_flight=1)
    await responder._answer(FakeMsg("llm.request", raw, reply="_INBOX_api.x"))
    [(reply_to, answer)] = nc.replies
    assert reply_to == "_INBOX_api.x"
    if parse(LimitRequest, raw) is None:
        assert decided == [] and answer["error"] == "invalid request" and answer["reason"]
        assert [subject for subject, _ in js.published] == ["dlq.llm.request"]
    else:
        assert len(decided) == 1 and js.published == []
