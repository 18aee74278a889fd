"""The client's copy of the contract (clients/python) cannot drift from the server's (shared/events.py):
the messages it sends have the server's schema, field for field and bound for bound, and each side reads
what the other writes; the decision it reads keeps whatever fields a newer limiter adds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import costwarden_client.contract as client
import pytest
from pydantic import BaseModel, ValidationError

import shared.events as server
from shared.bus import inbox_prefix
from shared.subjects import LLM_COMPLETED, LLM_REQUEST


def without_prose(schema: Any) -> Any:
    """A JSON schema without its titles and descriptions: what it accepts, nothing else."""
    if isinstance(schema, dict):
        return {key: without_prose(value) for key, value in schema.items() if key not in ("title", "description")}
    if isinstance(schema, list):
        return [without_prose(item) for item in schema]
    return schema


@pytest.mark.parametrize("name", ["LimitRequest", "LlmCompleted", "BilledAttempt"])
@pytest.mark.parametrize("mode", ["validation", "serialization"])
def test_what_the_client_sends_has_the_servers_schema(name, mode):
    ours: type[BaseModel] = getattr(client, name)
    theirs: type[BaseModel] = getattr(server, name)
    assert without_prose(ours.model_json_schema(mode=mode)) == without_prose(theirs.model_json_schema(mode=mode))


def test_the_decision_the_client_reads_has_every_field_the_client_names_as_the_server_does():
    ours = without_prose(client.LimitDecision.model_json_schema())["properties"]
    theirs = without_prose(server.LimitDecision.model_json_schema())["properties"]
    assert {name: theirs.get(name) for name in ours} == ours


def test_the_constants_are_the_servers():
    assert (client.LLM_REQUEST, client.LLM_COMPLETED) == (LLM_REQUEST, LLM_COMPLETED)
    assert client.UPSTREAM_INBOX_PREFIX == inbox_prefix("upstream")
    assert client.SCHEMA_VERSION == server.SCHEMA_VERSION
    assert client.MAX_TOKENS_PER_CALL == server.MAX_TOKENS_PER_CALL and client.MAX_TAGS == server.MAX_TAGS


def completed_fields() -> dict[str, Any]:
    return {"request_id": "r-1", "user_id": "u-1", "session_id": "s", "tier": "free", "provider": "openai",
            "model": "gpt-4o-mini", "served_model": "gpt-4o-mini-2024-07-18", "prompt_tokens": 12,
            "completion_tokens": 7, "cached_prompt_tokens": 2, "endpoint": "/v1/embeddings", "success": False,
            "error": "TimeoutError", "latency_ms": 30, "tags": {"feature": "search"}, "usage_source": "estimated",
            "billed_attempts": [{"provider": "together_ai", "served_model": "m", "prompt_tokens": 12}]}


def test_each_side_reads_what_the_other_writes():
    sent = client.LlmCompleted(id="r-1", **completed_fields())
    assert server.LlmCompleted.model_validate_json(sent.model_dump_json()).model_dump() == \
        {**sent.model_dump(), "billed_attempts": [a.model_dump() for a in sent.billed_attempts]}
    echoed = server.LlmCompleted(id="r-1", **completed_fields())
    assert client.LlmCompleted.model_validate_json(echoed.model_dump_json()) == sent.model_copy(
        update={"occurred_at": echoed.occurred_at})
    asked = client.LimitRequest(request_id="r-2", user_id="u", tier="pro", model="m", prompt_tokens_estimate=5,
                                max_tokens=9, choices=3, policy="strict", endpoint="/v1/embeddings")
    assert server.LimitRequest.model_validate_json(asked.model_dump_json()).model_dump() == asked.model_dump()


@pytest.mark.parametrize("broken", [{"prompt_tokens": -1}, {"tags": {"": "x"}}, {"latency_ms": 2**31},
                                    {"occurred_at": datetime(2026, 1, 1)},
                                    {"billed_attempts": [{"provider": "p", "served_model": "m",
                                                          "prompt_tokens": 999_999_990}]}])
def test_both_sides_refuse_the_same_events(broken):
    for model in (client.LlmCompleted, server.LlmCompleted):
        with pytest.raises(ValidationError):
            model(**{**completed_fields(), **broken})


def test_a_decision_keeps_the_fields_a_newer_limiter_adds():
    decision = server.LimitDecision(allowed=False, tier="free", limit=10, remaining=0, window_s=3600,
                                    reset_at=datetime.now(UTC) + timedelta(minutes=5), retry_after_s=300,
                                    reason="Free tier limit", limited_by="budget", reserved_usd=Decimal("0.5"))
    wire = decision.model_dump(mode="json") | {"scope": "team", "period": "day", "budget_usd": "5.00",
                                                "spent_usd": "5.01", "resets_at": "2026-01-02T00:00:00Z"}
    read = client.LimitDecision.model_validate(wire)
    assert read.model_dump(include=set(client.LimitDecision.model_fields)) == decision.model_dump()
    assert (read.scope, read.budget_usd, read.model_extra["resets_at"]) == ("team", "5.00", "2026-01-02T00:00:00Z")
