"""A local OpenAI-compatible LLM server: `make run` points the gateway at it when no
TOGETHER_API_KEY is set, and the tests use it as Together.ai and OpenAI.

It answers /v1/chat/completions (plain and streaming, usage in the final chunk when asked) and
/v1/models like the real APIs, requires a bearer key, and can be told to misbehave:
POST /_sim/faults {"status": 500, "count": 3, "delay_s": 0} makes the next 3 completions fail;
GET /_sim/stats returns how many calls it has seen.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MODELS = ["meta-llama/Llama-3-70b-chat-hf", "meta-llama/Llama-3-8b-chat-hf",
          "meta-llama/Llama-3.3-70B-Instruct-Turbo", "gpt-4o", "gpt-4o-mini"]
REPLY_WORDS = ("This is a simulated answer from the costwarden local LLM simulator. "
               "It echoes the size of your prompt and streams when asked.").split()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "simulated_error", "code": status}},
                        status_code=status)


def create_app(name: str = "simulator") -> Starlette:
    faults: dict[str, Any] = {"status": None, "count": 0, "delay_s": 0.0, "retry_after": None}
    stats = {"completions": 0, "models": 0}

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
        prompt_chars = sum(len(m.get("content") or "") for m in messages if isinstance(m.get("content"), str))
        prompt_tokens = math.ceil(prompt_chars / 4) + 4 * len(messages)
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or len(REPLY_WORDS)
        words = REPLY_WORDS[: max(1, min(int(max_tokens), len(REPLY_WORDS)))]
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words),
                 "total_tokens": prompt_tokens + len(words)}
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        model = body.get("model", "unknown")
        if not body.get("stream"):
            return JSONResponse({
                "id": completion_id, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words)},
                             "finish_reason": "stop"}],
                "usage": usage,
            })
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            data = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return f"data: {json.dumps(data)}\n\n".encode()

        async def events():
            yield chunk({"role": "assistant", "content": ""})
            for i, word in enumerate(words):
                yield chunk({"content": word if i == 0 else " " + word})
            yield chunk({}, "stop")
            if include_usage:
                data = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                        "model": model, "choices": [], "usage": usage}
                yield f"data: {json.dumps(data)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def models(request: Request) -> Response:
        if refused := await refusal(request, "models"):
            return refused
        return JSONResponse({"object": "list", "data": [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": name} for m in MODELS]})

    async def set_faults(request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        faults.update(status=body.get("status"), count=int(body.get("count", 0)),
                      delay_s=float(body.get("delay_s", 0)), retry_after=body.get("retry_after"))
        return JSONResponse(faults)

    async def get_stats(request: Request) -> Response:
        return JSONResponse(stats)

    return Starlette(routes=[
        Route("/v1/chat/completions", completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/_sim/faults", set_faults, methods=["POST"]),
        Route("/_sim/stats", get_stats, methods=["GET"]),
    ])
