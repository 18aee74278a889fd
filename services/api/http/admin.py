"""The admin API for keys: create (the key shown once), list, read (with the user's spend) and revoke.
Admin keys only; every change is an audit row (who, what, when), through services/keys/ as the CLI's."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from services.api.callers import Caller
from services.api.http.edge import caller_of, read_body
from services.api.http.errors import ApiError
from services.api.http.requests import AdminKeyCreate, request_body_doc
from services.api.http.state import ApiState, api_state
from services.keys.key_admin import parse_lifetime
from shared.api_keys import KeyRecord
from shared.cost_query import CostQuery, CostServiceUnavailable, CurrentCost

router = APIRouter(tags=["admin"])

CREATE_EXAMPLE = {"user_id": "alice", "tier": "pro", "alias": "alice's laptop", "expires_in": "30d"}


async def admin_caller(request: Request, state: ApiState) -> Caller:
    caller = await caller_of(request, state.admission)
    if caller.anonymous:
        raise ApiError(401, "the admin API needs an admin API key", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
    if not caller.is_admin:
        raise ApiError(403, "this key is not an admin key", type_="permission_error", code="forbidden")
    return caller


def actor_of(caller: Caller) -> str:
    return f"admin-api:{caller.user_id}"


def key_id_of(text: str) -> int:
    if not text.isdigit():
        raise ApiError(404, f"no key {text!r}", code="not_found", param="key_id")
    return int(text)


def found(key_id: int, record: KeyRecord | None) -> KeyRecord:
    if record is None:
        raise ApiError(404, f"no key {key_id}", code="not_found", param="key_id")
    return record


@router.post("/admin/keys", status_code=201, openapi_extra=request_body_doc(AdminKeyCreate, CREATE_EXAMPLE,
                                                                           answer_status=201))
async def create_key(request: Request) -> JSONResponse:
    state = api_state(request)
    caller = await admin_caller(request, state)
    body = await read_body(request, AdminKeyCreate, state.settings.max_body_bytes)
    tiers = state.config.key_tiers
    if body.tier not in tiers:
        raise ApiError(400, f"tier must be one of {', '.join(tiers)}", code="invalid_value", param="tier")
    try:
        expires_in = parse_lifetime(body.expires_in) if body.expires_in else None
    except ValueError as exc:
        raise ApiError(400, str(exc), code="invalid_value", param="expires_in") from None
    record, key = await state.key_admin.create(body.user_id, body.tier, actor_of(caller), body.admin, body.alias,
                                               expires_in)
    return JSONResponse({**record.as_json(), "key": key}, status_code=201)


@router.get("/admin/keys")
async def list_keys(request: Request) -> dict[str, Any]:
    state = api_state(request)
    await admin_caller(request, state)
    params = request.query_params
    revoked = params.get("revoked")
    if revoked not in (None, "true", "false"):
        raise ApiError(400, "revoked must be true or false", code="invalid_value", param="revoked")
    keys = await state.key_admin.list(params.get("user_id"), params.get("tier"),
                                      None if revoked is None else revoked == "true")
    return {"object": "list", "data": [key.as_json() for key in keys]}


@router.get("/admin/keys/{key_id}")
async def get_key(key_id: str, request: Request) -> dict[str, Any]:
    state = api_state(request)
    await admin_caller(request, state)
    number = key_id_of(key_id)
    record = found(number, await state.key_admin.get(number))
    key_spend, user_spend = await asyncio.gather(spend_of(state, CostQuery(kind="current", api_key_id=number)),
                                                 spend_of(state, CostQuery(kind="current", user_id=record.user_id)))
    return {**record.as_json(), "spend_usd": key_spend, "user_spend_usd": user_spend}


async def spend_of(state: ApiState, query: CostQuery) -> dict[str, str | None]:
    """Today's and this month's spend; nulls while the cost service does not answer (the key is still shown)."""
    try:
        answer = await state.cost_queries.answer(query)
    except CostServiceUnavailable:
        answer = None
    spend = answer if isinstance(answer, CurrentCost) else None
    return {"today": str(spend.daily) if spend else None, "this_month": str(spend.monthly) if spend else None}


@router.delete("/admin/keys/{key_id}")
async def revoke_key(key_id: str, request: Request) -> dict[str, Any]:
    """Revoke; the gateway stops accepting the key within its key cache's lifetime (API_KEY_CACHE_S)."""
    state = api_state(request)
    caller = await admin_caller(request, state)
    number = key_id_of(key_id)
    record = found(number, await state.key_admin.revoke(number, actor_of(caller)))
    return record.as_json()
