"""The console's pages: sign-in and sign-out, then Overview, Costs (with CSV), Keys, Limits, Teams, Alerts,
Health and Backups, rendered on the server from Jinja2 templates. Every page needs a session; every
form post needs the session's CSRF token; Health and Backups, and every change, are for admins."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from services.console.console import (
    DIMENSIONS,
    ORDERS,
    AdminOnly,
    BackupUnavailable,
    Console,
    KeyActionRefused,
    Viewer,
    breakdown_csv,
    budget_line,
    limits_from_form,
)
from services.console.periods import PRESETS, TimeRange, parse_range
from services.console.sessions import (
    NEW_KEY_COOKIE,
    SESSION_COOKIE,
    SIGNIN_COOKIE,
    Session,
    SessionCodec,
    new_nonce,
)
from services.console.svg_charts import Point, bar_chart, line_chart
from shared.events import utc_now
from shared.limits import SCOPES, Scope

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")
TOP_CHOICES = (10, 20, 50, 100, 500)
NEW_KEY_SHOWN_S = 120


def usd(value: Decimal | None) -> str:
    """Dollars and cents from $1 up; below that, enough places to show what a few calls cost (a short
    call on a small model costs millionths of a dollar). The exact figure is in each cell's data-value."""
    if value is None:
        return "—"
    amount = Decimal(value)
    places = "0.01" if abs(amount) >= 1 or amount == 0 else "0.0001" if abs(amount) >= Decimal("0.01") else "0.000001"
    return f"${amount.quantize(Decimal(places), rounding=ROUND_HALF_UP):,}"


def when(value: datetime | None) -> str:
    return "—" if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


TEMPLATES.env.filters.update(usd=usd, when=when, number=lambda n: f"{int(n):,}")


@dataclass
class ConsoleState:
    console: Console
    codec: SessionCodec
    tiers: list[str]
    secure_cookie: bool


class SignInNeeded(Exception):
    def __init__(self, path: str, stale_cookie: bool) -> None:
        self.path, self.stale_cookie = path, stale_cookie


class Forbidden(Exception):
    def __init__(self, message: str) -> None:
        self.message = message


def console_state(request: Request) -> ConsoleState:
    state: ConsoleState = request.app.state.console
    return state


async def state_of(request: Request) -> ConsoleState:
    """FastAPI dependency; a coroutine, since FastAPI runs a plain function dependency in its thread pool."""
    return console_state(request)


@dataclass(frozen=True)
class SignedIn:
    session: Session
    viewer: Viewer


async def signed_in(request: Request, state: ConsoleState = Depends(state_of)) -> SignedIn:
    session = state.codec.open(request.cookies.get(SESSION_COOKIE))
    viewer = await state.console.viewer(session.key_id, session.user_id, utc_now()) if session else None
    if session is None or viewer is None:
        raise SignInNeeded(request.url.path + (f"?{request.url.query}" if request.url.query else ""),
                           stale_cookie=SESSION_COOKIE in request.cookies)
    return SignedIn(session, viewer)


def check_csrf(state: ConsoleState, who: SignedIn, token: str) -> None:
    if not state.codec.csrf_ok(who.session.nonce, token):
        raise Forbidden("the form was not sent by this console (missing or wrong CSRF token); reload and retry")


def render(request: Request, template: str, who: SignedIn | None, status: int = 200, **context: Any) -> HTMLResponse:
    state = console_state(request)
    csrf = state.codec.csrf_token(who.session.nonce) if who else context.pop("csrf", "")
    return TEMPLATES.TemplateResponse(request, template, {"viewer": who.viewer if who else None, "csrf": csrf,
                                                          "path": request.url.path, **context}, status_code=status)


def safe_next(target: str | None) -> str:
    """Only a path of this console: never another site (open redirect). Browsers drop tabs and line
    breaks from a URL and read a backslash as a slash, so `/\t/evil` would be `//evil`."""
    if not target or not target.startswith("/") or any(ch in target for ch in "\t\r\n\\"):
        return "/"
    return "/" if target.startswith("//") else target


def set_cookie(response: Response, state: ConsoleState, name: str, value: str, max_age: int, path: str = "/") -> None:
    response.set_cookie(name, value, max_age=max_age, path=path, httponly=True, samesite="strict",
                        secure=state.secure_cookie)


router = APIRouter()


@router.get("/signin", response_class=HTMLResponse)
async def signin_form(request: Request, next: str = "/", state: ConsoleState = Depends(state_of)) -> Response:
    nonce = new_nonce()
    response = render(request, "signin.html", None, csrf=state.codec.csrf_token(nonce), next=safe_next(next))
    set_cookie(response, state, SIGNIN_COOKIE, nonce, 3600, path="/signin")
    return response


@router.post("/signin", response_class=HTMLResponse)
async def signin(request: Request, key: str = Form(""), csrf: str = Form(""), next: str = Form("/"),
                 state: ConsoleState = Depends(state_of)) -> Response:
    if not state.codec.csrf_ok(request.cookies.get(SIGNIN_COOKIE), csrf):
        raise Forbidden("the sign-in form expired or was not sent by this console; reload it and sign in again")
    row = await state.console.sign_in(key.strip(), utc_now())
    if row is None:
        return render(request, "signin.html", None, status=401, csrf=csrf, next=safe_next(next),
                      error="That key is unknown, revoked or expired.")
    session = Session(key=key.strip(), key_id=row.id, user_id=row.user_id, admin=row.admin, nonce=new_nonce())
    response = RedirectResponse(safe_next(next), status_code=303)
    set_cookie(response, state, SESSION_COOKIE, state.codec.seal(session), int(state.codec.lifetime_s))
    response.delete_cookie(SIGNIN_COOKIE, path="/signin")
    return response


@router.post("/signout")
async def signout(csrf: str = Form(""), who: SignedIn = Depends(signed_in),
                  state: ConsoleState = Depends(state_of)) -> Response:
    check_csrf(state, who, csrf)
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request, who: SignedIn = Depends(signed_in),
                   state: ConsoleState = Depends(state_of)) -> Response:
    page = await state.console.overview(who.viewer, utc_now())
    top_cost = max((cost for _, cost in page.hourly_cost), default=Decimal(0))
    hourly = bar_chart("Cost per hour, last 48 hours", [
        Point(at.strftime("%d %H:00"), cost, usd(cost)) for at, cost in page.hourly_cost], usd(top_cost))
    top_rpm = max((count for _, count in page.minutes), default=0)
    per_minute = line_chart("Requests per minute, last 24 hours", [
        Point(at.strftime("%d %H:%M"), count, f"{count} requests") for at, count in page.minutes], str(top_rpm))
    return render(request, "overview.html", who, page=page, hourly_chart=hourly, minute_chart=per_minute)


def window_of(range_name: str | None, start: str | None, end: str | None) -> TimeRange:
    try:
        return parse_range(range_name, start, end, utc_now())
    except ValueError as exc:
        raise BadInput(str(exc)) from None


class BadInput(Exception):
    def __init__(self, message: str) -> None:
        self.message = message


@dataclass(frozen=True)
class CostsQuery:
    window: TimeRange
    by: str
    sort: str
    top: int


async def costs_query(range: str | None = None, start: str | None = None, end: str | None = None, by: str = "model",
                sort: str = "cost", top: int = 20) -> CostsQuery:
    if by not in DIMENSIONS:
        raise BadInput(f"by must be one of {', '.join(DIMENSIONS)}")
    if sort not in ORDERS:
        raise BadInput(f"sort must be one of {', '.join(ORDERS)}")
    if not 1 <= top <= 1000:
        raise BadInput("top must be from 1 to 1000")
    return CostsQuery(window_of(range, start, end), by, sort, top)


@router.get("/costs", response_class=HTMLResponse)
async def costs(request: Request, query: CostsQuery = Depends(costs_query), who: SignedIn = Depends(signed_in),
                state: ConsoleState = Depends(state_of)) -> Response:
    rows = await state.console.costs(who.viewer, query.window, query.by, query.sort, query.top)
    sort_links = {order: str(request.url.include_query_params(sort=order)) for order in ORDERS}
    return render(request, "costs.html", who, rows=rows, query=query, presets=PRESETS, dimensions=DIMENSIONS,
                  orders=ORDERS, tops=TOP_CHOICES, csv_link=f"/costs.csv?{request.url.query}", sort_links=sort_links,
                  total=sum((row.cost for row in rows), Decimal(0)),
                  saved_total=sum((row.saved for row in rows), Decimal(0)))


@router.get("/costs.csv")
async def costs_csv(query: CostsQuery = Depends(costs_query), who: SignedIn = Depends(signed_in),
                    state: ConsoleState = Depends(state_of)) -> Response:
    rows = await state.console.costs(who.viewer, query.window, query.by, query.sort, query.top)
    name = f"costwarden-costs-by-{query.by}-{query.window.start:%Y%m%dT%H}-{query.window.end:%Y%m%dT%H}.csv"
    return PlainTextResponse(breakdown_csv(rows, query.by, query.window), media_type="text/csv",
                             headers={"Content-Disposition": f'attachment; filename="{name}"'})


async def keys_page(request: Request, who: SignedIn, state: ConsoleState, status: int = 200,
                    **context: Any) -> Response:
    now = utc_now()
    rows, usage = await state.console.keys(who.viewer, now)
    return render(request, "keys.html", who, status=status, keys=rows, usage=usage, tiers=state.tiers, now=now,
                  **context)


@router.get("/keys", response_class=HTMLResponse)
async def keys(request: Request, revoked: int | None = None, who: SignedIn = Depends(signed_in),
               state: ConsoleState = Depends(state_of)) -> Response:
    """A key just created is shown here once: it comes in a sealed cookie that this answer deletes, so
    that neither a URL, nor a reload, nor the history shows it again."""
    created = state.codec.open_text(request.cookies.get(NEW_KEY_COOKIE), NEW_KEY_SHOWN_S)
    response = await keys_page(request, who, state, revoked=revoked, created=created)
    if NEW_KEY_COOKIE in request.cookies:
        response.delete_cookie(NEW_KEY_COOKIE, path="/keys")
    return response


@router.post("/keys", response_class=HTMLResponse)
async def create_key(request: Request, user_id: str = Form(""), tier: str = Form(""), alias: str = Form(""),
                     expires_in: str = Form(""), admin: str = Form(""), csrf: str = Form(""),
                     who: SignedIn = Depends(signed_in), state: ConsoleState = Depends(state_of)) -> Response:
    check_csrf(state, who, csrf)
    try:
        made = await state.console.create_key(who.viewer, who.session.key, user_id.strip(), tier,
                                              alias.strip() or None, expires_in.strip() or None, admin == "on")
    except KeyActionRefused as exc:
        return await keys_page(request, who, state, status=400, error=str(exc))
    response = RedirectResponse(f"/keys?created={made.id}", status_code=303)
    set_cookie(response, state, NEW_KEY_COOKIE, state.codec.seal_text(made.key), NEW_KEY_SHOWN_S, path="/keys")
    return response


@router.post("/keys/{key_id}/revoke")
async def revoke_key(request: Request, key_id: int, csrf: str = Form(""), who: SignedIn = Depends(signed_in),
                     state: ConsoleState = Depends(state_of)) -> Response:
    check_csrf(state, who, csrf)
    try:
        await state.console.revoke_key(who.viewer, who.session.key, key_id)
    except KeyActionRefused as exc:
        return await keys_page(request, who, state, status=400, error=str(exc))
    return RedirectResponse(f"/keys?revoked={key_id}", status_code=303)


async def limits_page(request: Request, who: SignedIn, state: ConsoleState, range_name: str | None = None,
                      status: int = 200, editing: tuple[str, str] | None = None, **context: Any) -> Response:
    window = window_of(range_name, None, None)
    denials, callers = await state.console.limits(who.viewer, window)
    budgets = await state.console.budgets(who.viewer, utc_now())
    per_hour: dict[datetime, int] = {}
    for row in denials:
        per_hour[row.hour] = per_hour.get(row.hour, 0) + row.denials
    hours = window.hours()
    chart = bar_chart("Denials per hour", [Point(at.strftime("%d %H:00"), per_hour.get(at, 0),
                                                 f"{per_hour.get(at, 0)} denials") for at in hours[-168:]],
                      str(max(per_hour.values(), default=0)))
    edited = next((row for row in budgets if editing and (row.scope, row.scope_id) == editing), None)
    form = context.pop("form", None) or {
        "scope": editing[0] if editing else "team", "scope_id": editing[1] if editing else "",
        "budgets": "\n".join(budget_line(b) for b in edited.limits.budgets) if edited else "",
        "soft": ", ".join(str(f) for f in edited.limits.soft) if edited else "",
        "requests": edited.limits.requests or "" if edited else "",
        "window_s": edited.limits.window_s if edited else 3600,
        "tokens_per_minute": edited.limits.tokens_per_minute or "" if edited else "",
        "models": ", ".join(edited.limits.models or ()) if edited else ""}
    return render(request, "limits.html", who, status=status, denials=denials, callers=callers, window=window,
                  chart=chart, presets=PRESETS, total=sum(per_hour.values()), budgets=budgets, scopes=SCOPES,
                  form=form, **context)


@router.get("/limits", response_class=HTMLResponse)
async def limits(request: Request, range: str | None = None, scope: str | None = None, id: str | None = None,
                 saved: str | None = None, who: SignedIn = Depends(signed_in),
                 state: ConsoleState = Depends(state_of)) -> Response:
    editing = (scope, id) if scope in SCOPES and id else None
    return await limits_page(request, who, state, range, editing=editing, saved=saved)


def scope_of_form(scope: str) -> Scope:
    if scope not in SCOPES:
        raise BadInput(f"scope must be one of {', '.join(SCOPES)}")
    return scope  # type: ignore[return-value]


@router.post("/limits", response_class=HTMLResponse)
async def set_limits(request: Request, scope: str = Form(""), scope_id: str = Form(""), budgets: str = Form(""),
                     soft: str = Form(""), requests: str = Form(""), window_s: str = Form(""),
                     tokens_per_minute: str = Form(""), models: str = Form(""), csrf: str = Form(""),
                     who: SignedIn = Depends(signed_in), state: ConsoleState = Depends(state_of)) -> Response:
    """Set a key's, user's or team's limits through the admin API; they apply within seconds."""
    check_csrf(state, who, csrf)
    form = {"scope": scope, "scope_id": scope_id, "budgets": budgets, "soft": soft, "requests": requests,
            "window_s": window_s, "tokens_per_minute": tokens_per_minute, "models": models}
    try:
        body = limits_from_form(budgets, soft, requests, window_s, tokens_per_minute, models)
        await state.console.set_limits(who.viewer, who.session.key, scope_of_form(scope), scope_id.strip(), body)
    except (KeyActionRefused, ValueError) as exc:
        return await limits_page(request, who, state, status=400, error=str(exc), form=form)
    except BadInput as exc:
        return await limits_page(request, who, state, status=400, error=exc.message, form=form)
    return RedirectResponse(f"/limits?saved={quote(f'{scope}:{scope_id.strip()}')}", status_code=303)


@router.post("/limits/{scope}/{scope_id}/delete")
async def delete_limits(request: Request, scope: str, scope_id: str, csrf: str = Form(""),
                        who: SignedIn = Depends(signed_in), state: ConsoleState = Depends(state_of)) -> Response:
    check_csrf(state, who, csrf)
    try:
        await state.console.delete_limits(who.viewer, who.session.key, scope_of_form(scope), scope_id)
    except KeyActionRefused as exc:
        return await limits_page(request, who, state, status=400, error=str(exc))
    return RedirectResponse("/limits", status_code=303)


def user_list(text: str) -> list[str]:
    return [user.strip() for user in text.replace("\n", ",").split(",") if user.strip()]


async def teams_page(request: Request, who: SignedIn, state: ConsoleState, status: int = 200,
                     **context: Any) -> Response:
    return render(request, "teams.html", who, status=status, teams=await state.console.teams(who.viewer, utc_now()),
                  now=utc_now(), **context)


@router.get("/teams", response_class=HTMLResponse)
async def teams(request: Request, who: SignedIn = Depends(signed_in),
                state: ConsoleState = Depends(state_of)) -> Response:
    return await teams_page(request, who, state)


@router.post("/teams", response_class=HTMLResponse)
async def create_team(request: Request, team_id: str = Form(""), name: str = Form(""), members: str = Form(""),
                      csrf: str = Form(""), who: SignedIn = Depends(signed_in),
                      state: ConsoleState = Depends(state_of)) -> Response:
    check_csrf(state, who, csrf)
    try:
        await state.console.create_team(who.viewer, who.session.key, team_id.strip(), name.strip() or team_id.strip(),
                                        user_list(members))
    except KeyActionRefused as exc:
        return await teams_page(request, who, state, status=400, error=str(exc))
    return RedirectResponse(f"/teams#team-{quote(team_id.strip())}", status_code=303)


@router.post("/teams/{team_id}/members", response_class=HTMLResponse)
async def change_team(request: Request, team_id: str, user_id: str = Form(""), action: str = Form("add"),
                      csrf: str = Form(""), who: SignedIn = Depends(signed_in),
                      state: ConsoleState = Depends(state_of)) -> Response:
    check_csrf(state, who, csrf)
    users = user_list(user_id)
    try:
        await state.console.change_team(who.viewer, who.session.key, team_id, users if action == "add" else [],
                                        users if action == "remove" else [])
    except KeyActionRefused as exc:
        return await teams_page(request, who, state, status=400, error=str(exc))
    return RedirectResponse(f"/teams#team-{quote(team_id)}", status_code=303)


@router.get("/alerts", response_class=HTMLResponse)
async def alerts(request: Request, who: SignedIn = Depends(signed_in),
                 state: ConsoleState = Depends(state_of)) -> Response:
    rows, dead_letters = await state.console.alerts(who.viewer, utc_now())
    channels = sorted({channel for row in rows for channel in row.deliveries})
    return render(request, "alerts.html", who, alerts=rows, channels=channels, dead_letters=dead_letters)


@router.get("/status", response_class=HTMLResponse)
async def status(request: Request, who: SignedIn = Depends(signed_in),
                 state: ConsoleState = Depends(state_of)) -> Response:
    dependencies, breakers = await state.console.health(who.viewer)
    return render(request, "status.html", who, dependencies=dependencies, breakers=breakers)


@router.get("/backups", response_class=HTMLResponse)
async def backups(request: Request, requested: str | None = None, who: SignedIn = Depends(signed_in),
                  state: ConsoleState = Depends(state_of)) -> Response:
    return render(request, "backups.html", who, backups=await state.console.backups(who.viewer), requested=requested)


@router.post("/backups", response_class=HTMLResponse)
async def run_backup(request: Request, csrf: str = Form(""), who: SignedIn = Depends(signed_in),
                     state: ConsoleState = Depends(state_of)) -> Response:
    check_csrf(state, who, csrf)
    try:
        request_id = await state.console.request_backup(who.viewer)
    except BackupUnavailable as exc:
        return render(request, "backups.html", who, status=503, backups=await state.console.backups(who.viewer),
                      error=str(exc))
    return RedirectResponse(f"/backups?requested={quote(request_id)}", status_code=303)


def install_handlers(app: Any) -> None:
    @app.exception_handler(SignInNeeded)
    async def to_signin(request: Request, exc: SignInNeeded) -> Response:
        response = RedirectResponse(f"/signin?next={quote(exc.path)}", status_code=303)
        if exc.stale_cookie:  # only a cookie that came and failed: a request without one changes nothing
            response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> Response:
        return render(request, "error.html", None, status=403, title="Not allowed", message=exc.message)

    @app.exception_handler(AdminOnly)
    async def admins_only(request: Request, exc: AdminOnly) -> Response:
        return render(request, "error.html", None, status=403, title="Not allowed", message=str(exc))

    @app.exception_handler(RequestValidationError)
    async def bad_query(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(f"{'.'.join(str(p) for p in error['loc'][1:])}: {error['msg']}" for error in exc.errors())
        return render(request, "error.html", None, status=400, title="Bad request", message=problems)

    @app.exception_handler(BadInput)
    async def bad_input(request: Request, exc: BadInput) -> Response:
        return render(request, "error.html", None, status=400, title="Bad request", message=exc.message)
