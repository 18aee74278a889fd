"""The event contract's validation."""

from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from shared.bus import describe_invalid
from shared.events import LlmCompleted, new_id


def test_events_reject_negative_tokens_and_naive_times():
    with pytest.raises(ValidationError) as exc:
        LlmCompleted(request_id="r", provider="p", model="m", prompt_tokens=-1, completion_tokens=0, endpoint="/",
                     success=True, latency_ms=1)
    assert "prompt_tokens" in describe_invalid(exc.value)
    with pytest.raises(ValidationError, match="timezone"):
        LlmCompleted(request_id="r", provider="p", model="m", prompt_tokens=1, completion_tokens=0, endpoint="/",
                     success=True, latency_ms=1, occurred_at="2024-01-01T00:00:00")


def test_an_event_that_says_nothing_of_what_answered_was_served_by_what_was_asked_for():
    old = LlmCompleted.model_validate_json('{"request_id": "r", "provider": "openai", "model": "gpt-4o-mini", '
                                           '"prompt_tokens": 3, "completion_tokens": 4, "endpoint": "/", '
                                           '"success": true, "latency_ms": 1}')
    assert (old.served_model, old.answered_by, old.billed_attempts, old.total_tokens) == (None, "gpt-4o-mini", [], 7)


def test_billed_attempts_may_not_push_a_call_past_what_the_ledger_holds():
    attempt = {"provider": "together_ai", "served_model": "llama", "prompt_tokens": 600_000_000}
    with pytest.raises(ValidationError, match="billed attempts included"):
        LlmCompleted(request_id="r", provider="openai", model="m", prompt_tokens=1, completion_tokens=0, endpoint="/",
                     success=True, latency_ms=1, billed_attempts=[attempt, attempt])


def test_event_ids_are_random_uuid4_hex():
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    for event_id in ids:
        parsed = uuid.UUID(hex=event_id)
        assert (parsed.hex, parsed.version, parsed.variant) == (event_id, 4, uuid.RFC_4122)
