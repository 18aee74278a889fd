"""OpenAI-compatible POST /v1/embeddings: the same admission, limits, routing and recording as a chat
call, with nothing generated (the limiter reserves the input and one token, the least the contract
takes; the call is settled to its input tokens)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.api.http.edge import admit, admit_cached, cache_plan, call_context, caller_of, public_model, read_body
from services.api.http.requests import EmbeddingsRequest, request_body_doc
from services.api.http.state import api_state

router = APIRouter()
ENDPOINT = "/v1/embeddings"
RESERVED_COMPLETION_TOKENS = 1


@router.post(ENDPOINT, openapi_extra=request_body_doc(EmbeddingsRequest, {
    "model": "text-embedding-3-small", "input": ["The food was delicious", "and the waiter was kind"]}))
async def embeddings(request: Request) -> Response:
    state = api_state(request)
    caller = await caller_of(request, state.admission)
    body = await read_body(request, EmbeddingsRequest, state.settings.max_body_bytes)
    model = public_model(state.admission, body.model, "embeddings")
    payload = body.model_dump(exclude_none=True)
    plan = cache_plan(request, state, caller, "embeddings", body.model, payload) if state.cache is not None else None
    ctx = await call_context(request, state, caller, body.model, model, ENDPOINT, "standard", None, payload,
                             RESERVED_COMPLETION_TOKENS)
    keep = None
    if plan is None:
        headers, ctx = await admit(state, ctx)
    else:
        headers, ctx, cached, keep = await admit_cached(state, ctx, plan)
        if cached is not None:
            return Response(cached.plain(), media_type="application/json", headers=headers)
    call = await state.gateway.complete(ctx, payload, "embeddings", keep)
    return Response(call.raw, media_type="application/json",
                    headers={**headers, "X-Costwarden-Provider": call.provider})
