"""GET /api/costs/current and /api/costs/analytics, answered by the cost service. A normal key sees
its own usage only; an admin key sees everyone's, or one user's with ?user_id=."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from services.api.http.edge import caller_of
from services.api.http.errors import ApiError, validation_error
from services.api.http.state import ApiState, api_state
from shared.cost_query import CostQuery, CostQueryRefused, CostServiceUnavailable

router = APIRouter()


async def answer(request: Request, state: ApiState, fields: dict[str, Any]) -> JSONResponse:
    caller = await caller_of(request, state.admission)
    if caller.anonymous:
        raise ApiError(401, "cost queries need an API key", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
    requested_user = request.query_params.get("user_id")
    if not caller.is_admin and requested_user not in (None, caller.user_id):
        raise ApiError(403, "a non-admin key can only read its own usage", type_="permission_error",
                       code="forbidden", param="user_id")
    user_id = requested_user if caller.is_admin else caller.user_id
    try:
        query = CostQuery(user_id=user_id, **fields)
    except ValidationError as exc:
        raise validation_error(exc) from None
    try:
        result = await state.cost_queries.answer(query)
    except CostServiceUnavailable as exc:
        raise ApiError(503, str(exc), type_="service_unavailable", code="cost_unavailable") from None
    except CostQueryRefused as exc:
        raise ApiError(400, str(exc), code="invalid_value") from None
    return JSONResponse(result.model_dump(mode="json"))


@router.get("/api/costs/current")
async def current_costs(request: Request) -> JSONResponse:
    state = api_state(request)
    return await answer(request, state, {"kind": "current"})


@router.get("/api/costs/analytics")
async def cost_analytics(request: Request) -> JSONResponse:
    state = api_state(request)
    params = request.query_params
    for name in ("start", "end"):
        if name not in params:
            raise ApiError(400, "start and end (ISO 8601 with a timezone) are required", code="invalid_value",
                           param=name)
    top_n = params.get("top_n", "10")
    if not top_n.isdigit():
        raise ApiError(400, "top_n must be a whole number", code="invalid_value", param="top_n")
    return await answer(request, state, {"kind": "analytics", "start": params["start"], "end": params["end"],
                                         "top_n": int(top_n)})
