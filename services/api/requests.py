"""What callers send to the gateway, validated."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_TEXT_CHARS = 400_000


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completion request; fields the gateway does not read pass through to the provider."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1, max_length=2048)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    user: str | None = Field(default=None, max_length=256)

    @property
    def completion_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class AgentRequest(BaseModel):
    """What the original /api/agent/* endpoints accept besides their text."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, max_length=256)
    max_tokens: int | None = None
    session_id: str | None = Field(default=None, max_length=256)


class AgentQuery(AgentRequest):
    """Body of the original POST /api/agent/query."""

    query: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)


class LongFormRequest(AgentRequest):
    """Body of the original POST /api/agent/generate-long-form (strict policy)."""

    prompt: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)

