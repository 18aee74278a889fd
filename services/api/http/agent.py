"""The original system's routes: POST /api/agent/query and POST /api/agent/generate-long-form (strict
policy), answering {requestId, response, model, provider, usage}."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from services.api.http.edge import admit, call_context, caller_of, completion_tokens, public_model, read_body
from services.api.http.requests import AgentQuery, AgentRequest, LongFormRequest, request_body_doc
from services.api.http.state import ApiState, api_state
from shared.events import Policy
from shared.policy import completion_limit

router = APIRouter()
LONG_FORM_MAX_TOKENS = 4096


async def agent_call(request: Request, state: ApiState, body: AgentRequest, text: str, endpoint: str,
                     policy: Policy, default_max_tokens: int | None) -> JSONResponse:
    """`default_max_tokens`: what the endpoint generates when the caller names no limit (None: the model's
    or the operator's default)."""
    caller = await caller_of(request, state.admission)
    model = body.model or state.config.default_model
    config = public_model(state.admission, model)
    default = default_max_tokens or completion_limit(config, state.settings.default_max_tokens)
    max_tokens = completion_tokens(body.max_tokens, "max_tokens", config, default,
                                   state.settings.reservation_cap_tokens)
    payload = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}
    ctx = await call_context(request, state, caller, model, config, endpoint, policy, body.session_id, payload,
                             max_tokens)
    headers = await admit(state, ctx)
    call = await state.gateway.complete(ctx, payload)
    answer = call.body or {}
    choice = (answer.get("choices") or [{}])[0]
    return JSONResponse({
        "requestId": ctx.request_id,
        "response": (choice.get("message") or {}).get("content"),
        "model": model,
        "provider": call.provider,
        "usage": answer.get("usage"),
    }, headers=headers)


@router.post("/api/agent/query", openapi_extra=request_body_doc(AgentQuery, {"query": "What is our spend today?"}))
async def agent_query(request: Request) -> JSONResponse:
    state = api_state(request)
    body = await read_body(request, AgentQuery, state.settings.max_body_bytes)
    return await agent_call(request, state, body, body.query, "/api/agent/query", "standard", None)


@router.post("/api/agent/generate-long-form", openapi_extra=request_body_doc(
    LongFormRequest, {"prompt": "Write a short report on LLM spend.", "max_tokens": 64}))
async def agent_long_form(request: Request) -> JSONResponse:
    state = api_state(request)
    body = await read_body(request, LongFormRequest, state.settings.max_body_bytes)
    return await agent_call(request, state, body, body.prompt, "/api/agent/generate-long-form", "strict",
                            LONG_FORM_MAX_TOKENS)
