"""OpenAI-compatible routes: POST /v1/chat/completions (plain and streamed) and GET /v1/models
(POST /v1/embeddings is in embeddings.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from services.api.http.edge import (
    admit,
    admit_cached,
    cache_plan,
    call_context,
    caller_of,
    completion_tokens,
    public_model,
    read_body,
)
from services.api.http.requests import ChatCompletionRequest, request_body_doc
from services.api.http.state import api_state
from shared.policy import completion_limit

router = APIRouter()
MODELS_CREATED = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp())


class RelayResponse(StreamingResponse):
    """A relayed stream that is closed as soon as the response ends, however it ends. Starlette cancels
    a streaming response whose client disconnects; the relay may then be parked at a `yield` and would
    otherwise only be closed whenever the garbage collector finds it (and only then record the call)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


@router.post("/v1/chat/completions", openapi_extra=request_body_doc(ChatCompletionRequest, {
    "model": "meta-llama/Llama-3-8b-chat-hf", "messages": [{"role": "user", "content": "Say hello"}],
    "max_tokens": 16}, streams=True))
async def chat_completions(request: Request) -> Response:
    state = api_state(request)
    caller = await caller_of(request, state.admission)
    chat = await read_body(request, ChatCompletionRequest, state.settings.max_body_bytes)
    model = public_model(state.admission, chat.model)
    param = "max_completion_tokens" if chat.max_completion_tokens is not None else "max_tokens"
    choices = chat.n or 1
    max_tokens = completion_tokens(chat.completion_limit, param, model,
                                   completion_limit(model, state.settings.default_max_tokens),
                                   state.settings.reservation_cap_tokens, choices)
    payload = chat.model_dump(exclude_none=True)
    if chat.completion_limit is None:  # the provider may generate no more than the limiter reserved
        payload["max_tokens"] = max_tokens
    plan = cache_plan(request, state, caller, "chat", chat.model, payload) if state.cache is not None else None
    ctx = await call_context(request, state, caller, chat.model, model, "/v1/chat/completions", "standard", None,
                             payload, max_tokens, choices)
    keep = None
    if plan is None:
        headers, ctx = await admit(state, ctx)
    else:
        headers, ctx, cached, keep = await admit_cached(state, ctx, plan)
        if cached is not None:
            if not chat.stream:
                return Response(cached.plain(), media_type="application/json", headers=headers)
            events = cached.stream(bool((chat.stream_options or {}).get("include_usage")))
            return StreamingResponse(replayed(events), media_type="text/event-stream",
                                     headers={**headers, "Cache-Control": "no-cache"})
    if not chat.stream:
        call = await state.gateway.complete(ctx, payload, keep=keep)
        return Response(call.raw, media_type="application/json",
                        headers={**headers, "X-Costwarden-Provider": call.provider})
    relay = await state.gateway.open_stream(ctx, payload, bool((chat.stream_options or {}).get("include_usage")),
                                            keep)
    return RelayResponse(relay, media_type="text/event-stream",
                         headers={**headers, "X-Costwarden-Provider": relay.provider, "Cache-Control": "no-cache"})


async def replayed(events: Sequence[bytes]) -> AsyncIterator[bytes]:
    for event in events:
        yield event


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """The public models of the configuration; `serves` says which endpoint takes each (chat or
    embeddings), `owned_by` names its first route's provider."""
    state = api_state(request)
    return {"object": "list", "data": [
        {"id": name, "object": "model", "created": MODELS_CREATED, "owned_by": model.routes[0].provider,
         "serves": model.serves}
        for name, model in state.config.models.items()
    ]}
