"""What a call may generate: what the caller asked for within the model's ceiling and the reservation
cap, else the default the limiter reserves on and the provider is sent."""

from __future__ import annotations

import pytest

from services.api.http.edge import completion_tokens
from services.api.http.errors import ApiError
from shared.policy import ModelConfig, completion_limit

PLAIN = ModelConfig.model_validate([{"provider": "openai", "model": "gpt-4o"}])
CEILING = ModelConfig.model_validate({"routes": [{"provider": "openai", "model": "gpt-4o"}], "max_tokens": 300})


def test_an_absent_limit_is_the_models_ceiling_else_the_operators_default():
    assert completion_limit(PLAIN, 1024) == 1024 and completion_limit(CEILING, 1024) == 300
    assert completion_tokens(None, "max_tokens", PLAIN, completion_limit(PLAIN, 1024), cap=32_768) == 1024
    assert completion_tokens(None, "max_tokens", CEILING, completion_limit(CEILING, 1024), cap=32_768) == 300
    assert completion_tokens(None, "max_tokens", CEILING, 4096, cap=32_768) == 300  # a larger default is held to it


def test_a_limit_past_the_models_ceiling_or_the_cap_is_refused_naming_the_ceiling():
    assert completion_tokens(300, "max_tokens", CEILING, 1024, cap=32_768) == 300
    with pytest.raises(ApiError) as past_ceiling:
        completion_tokens(301, "max_completion_tokens", CEILING, 1024, cap=32_768)
    assert (past_ceiling.value.status, past_ceiling.value.param) == (400, "max_completion_tokens")
    assert past_ceiling.value.message == "max_completion_tokens must be between 1 and 300"
    with pytest.raises(ApiError, match="between 1 and 100"):
        completion_tokens(101, "max_tokens", PLAIN, 1024, cap=100)


def test_every_choice_must_fit_the_reservation_cap():
    assert completion_tokens(500, "max_tokens", PLAIN, 1024, cap=2000, choices=4) == 500
    with pytest.raises(ApiError) as too_many:
        completion_tokens(None, "max_tokens", PLAIN, 1024, cap=2000, choices=4)
    assert too_many.value.param == "n" and "4 x 1024" in too_many.value.message
