"""What callers may send the gateway."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.api.http.requests import AgentQuery, ChatCompletionRequest


def test_max_completion_tokens_wins_over_max_tokens_and_unknown_fields_pass_through():
    chat = ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                                 "max_tokens": 10, "max_completion_tokens": 20, "top_p": 0.5})
    assert chat.completion_limit == 20 and chat.model_dump()["top_p"] == 0.5


def test_a_chat_needs_messages_with_known_roles_and_agent_bodies_refuse_unknown_fields():
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"model": "m", "messages": []})
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "robot", "content": "x"}]})
    with pytest.raises(ValidationError, match="extra"):
        AgentQuery.model_validate({"query": "hi", "temperature": 2})
