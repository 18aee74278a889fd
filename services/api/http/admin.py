"""The admin API: keys (create, the key shown once; list; read with the user's spend; revoke), teams and
their members, the limits of keys, users and teams, and their spend against each budget. Admin keys only;
every change is an audit row (who, what, when), through services/keys/ (as the CLI's) and
services/teams/ (as the soak's), and a change of teams or limits applies on every limiter within seconds."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from services.api.callers import Caller
from services.api.http.edge import caller_of, read_body
from services.api.http.errors import ApiError, validation_error
from services.api.http.requests import AdminKeyCreate, TeamChange, TeamCreate, request_body_doc
from services.api.http.state import ApiState, api_state
from services.keys.key_admin import parse_lifetime
from services.teams.team_admin import Refused, Team
from shared.api_keys import KeyRecord
from shared.cost_query import CostQuery, CostQueryRefused, CostServiceUnavailable, CurrentCost, ScopeSpend
from shared.limits import Scope, ScopeLimits

router = APIRouter(tags=["admin"])

CREATE_EXAMPLE = {"user_id": "alice", "tier": "pro", "alias": "alice's laptop", "expires_in": "30d",
                  "team_id": "research"}
TEAM_EXAMPLE = {"team_id": "research", "name": "Research", "members": ["alice", "bob"]}
LIMITS_EXAMPLE = {"budgets": [{"usd": "500", "period": "month", "timezone": "Europe/Berlin"},
                              {"usd": "40", "rolling": "24h"}],
                  "soft": ["0.5", "0.8"], "requests": 1000, "window_s": 3600, "tokens_per_minute": 200000,
                  "models": ["meta-llama/Llama-3-8b-chat-hf", "gpt-4o-mini"]}
COLLECTIONS: dict[str, Scope] = {"keys": "key", "users": "user", "teams": "team"}


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
    try:
        record, key = await state.key_admin.create(body.user_id, body.tier, actor_of(caller), body.admin, body.alias,
                                                   expires_in, body.team_id)
    except ValueError as exc:  # not the user's team
        raise ApiError(409, str(exc), code="team_mismatch", param="team_id") from None
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
                                      None if revoked is None else revoked == "true", params.get("team_id"))
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


def refused(exc: Refused) -> ApiError:
    codes = {404: "not_found", 409: "conflict"}
    return ApiError(exc.status, str(exc), code=codes.get(exc.status, "invalid_value"))


def found_team(team_id: str, team: Team | None) -> Team:
    if team is None:
        raise ApiError(404, f"no team {team_id}", code="not_found", param="team_id")
    return team


async def team_json(state: ApiState, team: Team) -> dict[str, Any]:
    keys = await state.key_admin.list(None, None, None, team.team_id)
    limits = await state.teams.store.limits("team", team.team_id)
    return {**team.as_json(), "keys": [key.as_json() for key in keys],
            "limits": limits.limits.model_dump(mode="json") if limits else None}


@router.post("/admin/teams", status_code=201, openapi_extra=request_body_doc(TeamCreate, TEAM_EXAMPLE,
                                                                            answer_status=201))
async def create_team(request: Request) -> JSONResponse:
    """A team with its members (their keys join it with them); a user is in at most one team (409)."""
    state = api_state(request)
    caller = await admin_caller(request, state)
    body = await read_body(request, TeamCreate, state.settings.max_body_bytes)
    try:
        team = await state.teams.create_team(body.team_id, body.name or body.team_id, body.members, actor_of(caller))
    except Refused as exc:
        raise refused(exc) from None
    return JSONResponse(await team_json(state, team), status_code=201)


@router.get("/admin/teams")
async def list_teams(request: Request) -> dict[str, Any]:
    state = api_state(request)
    await admin_caller(request, state)
    return {"object": "list", "data": [team.as_json() for team in await state.teams.store.teams()]}


@router.get("/admin/teams/{team_id}")
async def get_team(team_id: str, request: Request) -> dict[str, Any]:
    """The team, its members, their keys and its own limits."""
    state = api_state(request)
    await admin_caller(request, state)
    return await team_json(state, found_team(team_id, await state.teams.store.team(team_id)))


@router.patch("/admin/teams/{team_id}", openapi_extra=request_body_doc(
    TeamChange, {"add_members": ["carol"], "remove_members": ["bob"]}))
async def change_team(team_id: str, request: Request) -> dict[str, Any]:
    """Rename, add members (a user in another team is refused: remove them there first), remove members
    (their keys leave the team with them)."""
    state = api_state(request)
    caller = await admin_caller(request, state)
    body = await read_body(request, TeamChange, state.settings.max_body_bytes)
    try:
        team = await state.teams.change_team(team_id, body.name, body.add_members, body.remove_members,
                                             actor_of(caller))
    except Refused as exc:
        raise refused(exc) from None
    return await team_json(state, team)


@router.delete("/admin/teams/{team_id}")
async def delete_team(team_id: str, request: Request) -> dict[str, Any]:
    """The team, its memberships (keys leave it) and its limits; its spend stays in the ledger."""
    state = api_state(request)
    caller = await admin_caller(request, state)
    team = found_team(team_id, await state.teams.delete_team(team_id, actor_of(caller)))
    return {**team.as_json(), "deleted": True}


def scope_of(collection: str) -> Scope:
    if collection not in COLLECTIONS:
        raise ApiError(404, f"no route for /admin/{collection}: use keys, users or teams", code="not_found")
    return COLLECTIONS[collection]


def scope_id_of(scope: Scope, text: str) -> str:
    """A key is named by its id as a number (`7`, not `007`); users and teams as given."""
    return str(key_id_of(text)) if scope == "key" else text


@router.put("/admin/{collection}/{scope_id}/limits", openapi_extra=request_body_doc(ScopeLimits, LIMITS_EXAMPLE))
async def set_limits(collection: str, scope_id: str, request: Request
                     ) -> dict[str, Any]:
    """Replace a key's, user's or team's limits: budgets on calendar periods in a timezone or rolling
    windows, soft alert thresholds, a request window, tokens per minute, the models it may call. Every
    limiter applies them within seconds; a call must still pass its tier's limits too."""
    state = api_state(request)
    caller = await admin_caller(request, state)
    limits = await read_body(request, ScopeLimits, state.settings.max_body_bytes)
    if limits.models is not None:
        unknown = sorted(set(limits.models) - set(state.config.models))
        if unknown:
            raise ApiError(400, f"unknown models: {', '.join(unknown)}", code="invalid_value", param="models")
    try:
        scope = scope_of(collection)
        record = await state.teams.set_limits(scope, scope_id_of(scope, scope_id), limits, actor_of(caller))
    except Refused as exc:
        raise refused(exc) from None
    return record.as_json()


@router.get("/admin/{collection}/{scope_id}/limits")
async def get_limits(collection: str, scope_id: str, request: Request
                     ) -> dict[str, Any]:
    state = api_state(request)
    await admin_caller(request, state)
    scope = scope_of(collection)
    record = await state.teams.store.limits(scope, scope_id_of(scope, scope_id))
    if record is None:
        raise ApiError(404, f"{scope} {scope_id} has no limits of its own: its tier's apply", code="not_found")
    return record.as_json()


@router.delete("/admin/{collection}/{scope_id}/limits")
async def delete_limits(collection: str, scope_id: str, request: Request
                        ) -> dict[str, Any]:
    """Remove a scope's own limits: its calls have their tier's limits alone, on every limiter within seconds."""
    state = api_state(request)
    caller = await admin_caller(request, state)
    scope = scope_of(collection)
    record = await state.teams.delete_limits(scope, scope_id_of(scope, scope_id), actor_of(caller))
    if record is None:
        raise ApiError(404, f"{scope} {scope_id} has no limits of its own", code="not_found")
    return {**record.as_json(), "deleted": True}


@router.get("/admin/{collection}/{scope_id}/spend")
async def scope_spend(collection: str, scope_id: str, request: Request
                      ) -> dict[str, Any]:
    """Spend against each budget (spent, remaining, period start, next reset), and this UTC day and month,
    from the cost service's record of the ledger."""
    state = api_state(request)
    await admin_caller(request, state)
    try:
        scope = scope_of(collection)
        query = CostQuery(kind="budgets", scope=scope, scope_id=scope_id_of(scope, scope_id))
    except ValidationError as exc:
        raise validation_error(exc) from None
    try:
        answer = await state.cost_queries.answer(query)
    except CostServiceUnavailable:
        raise ApiError(503, "the cost service did not answer; try again shortly", type_="service_unavailable",
                       code="cost_service_unavailable", headers={"Retry-After": "5"}) from None
    except CostQueryRefused as exc:
        raise ApiError(400, str(exc), code="invalid_value") from None
    assert isinstance(answer, ScopeSpend)
    return answer.model_dump(mode="json")
