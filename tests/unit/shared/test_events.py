"""The event contract's validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.bus import describe_invalid
from shared.events import LlmCompleted


def test_events_reject_negative_tokens_and_naive_times():
    with pytest.raises(ValidationError) as exc:
        LlmCompleted(request_id="r", provider="p", model="m", prompt_tokens=-1, completion_tokens=0, endpoint="/",
                     success=True, latency_ms=1)
    assert "prompt_tokens" in describe_invalid(exc.value)
    with pytest.raises(ValidationError, match="timezone"):
        LlmCompleted(request_id="r", provider="p", model="m", prompt_tokens=1, completion_tokens=0, endpoint="/",
                     success=True, latency_ms=1, occurred_at="2024-01-01T00:00:00")
