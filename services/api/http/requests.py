"""What callers send to the gateway, validated."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.events import MAX_CHOICES

MAX_TEXT_CHARS = 400_000
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's own bound on one embeddings call


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
    n: int | None = Field(default=None, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    user: str | None = Field(default=None, max_length=256)

    @property
    def completion_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class EmbeddingsRequest(BaseModel):
    """OpenAI's embeddings request; fields the gateway does not read pass through to the provider."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="A string, an array of strings, an array of tokens or an array of token arrays.")
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = Field(default=None, max_length=256)

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: str | list[Any]) -> str | list[Any]:
        if not value or (isinstance(value, list) and any(isinstance(item, str | list) and not item for item in value)):
            raise ValueError("input must not be empty, nor hold an empty string or token array")
        if isinstance(value, list) and len(value) > MAX_EMBEDDING_INPUTS and not isinstance(value[0], int):
            raise ValueError(f"at most {MAX_EMBEDDING_INPUTS} inputs in one call")
        return value


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



class AdminKeyCreate(BaseModel):
    """Body of POST /admin/keys."""

    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=256)
    tier: str = Field(min_length=1, max_length=64)
    alias: str | None = Field(default=None, max_length=128)
    expires_in: str | None = Field(default=None, max_length=16, description="a lifetime such as 30d, 12h or 45m")
    admin: bool = Field(default=False, description="an admin key may read every user's usage and manage keys")
    team_id: str | None = Field(default=None, max_length=64,
                                description="the user's team: a key is in its user's team (checked when given)")


class TeamCreate(BaseModel):
    """Body of POST /admin/teams."""

    model_config = ConfigDict(extra="forbid")

    team_id: str = Field(min_length=1, max_length=64, description="letters, digits, '_', '.', '-'")
    name: str | None = Field(default=None, min_length=1, max_length=200, description="absent: the team_id")
    members: list[str] = Field(default_factory=list, max_length=10_000,
                               description="user ids; a user is in at most one team")


class TeamChange(BaseModel):
    """Body of PATCH /admin/teams/{team_id}."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    add_members: list[str] = Field(default_factory=list, max_length=10_000)
    remove_members: list[str] = Field(default_factory=list, max_length=10_000)


def request_body_doc(model: type[BaseModel], example: dict[str, Any], streams: bool = False,
                     answer_status: int = 200) -> dict[str, Any]:
    """The OpenAPI entries of an endpoint that reads its JSON body itself (to bound its size and answer
    in the gateway's error format): the body's schema, with its definitions inlined, and the answers
    (JSON, or Server-Sent Events when the call streams; errors in the OpenAI format)."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    answer = {"application/json": {"schema": {"type": "object"}}}
    if streams:
        answer["text/event-stream"] = {"schema": {"type": "string"}}
    error = {"description": "an error in the OpenAI format",
             "content": {"application/json": {"schema": ERROR_BODY_SCHEMA}}}
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema),
                                                                            "example": example}}},
        "responses": {str(answer_status): {"description": "the answer", "content": answer},
                      **{str(status): error for status in (400, 401, 404, 413, 415, 422, 429, 502, 503, 504)}},
    }


ERROR_BODY_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
}
