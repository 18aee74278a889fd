"""The console's pages served in process (create_app with its resources given) on fakes of its ports:
sessions, CSRF, who may see what, and the headers every page carries. tests/integration/test_console.py
drives the real console in Chromium over the whole system."""

from __future__ import annotations

import re
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal

import httpx
import pytest

from services.console.app import OpenedConsole, create_app
from services.console.console import BreakdownRow, Console, CreatedKey, KeyUsage, Traffic
from services.console.settings import ConsoleSettings
from shared.api_keys import KeyRecord, display_prefix, hash_api_key
from shared.events import utc_now
from shared.policy import Thresholds
from tests.support.in_process import served

ADMIN_KEY, ANN_KEY = "cw_admin-key-for-the-console-tests", "cw_ann-key-for-the-console-tests"
PAGES = ("/", "/costs", "/keys", "/limits", "/alerts", "/status", "/backups")


def record(key_id: int, key: str, user: str, admin: bool) -> KeyRecord:
    return KeyRecord(key_id, display_prefix(key), user, "pro", admin, None, utc_now(), None, None, None)


class Ledger:
    """ConsoleStore: two keys and a little spend."""

    def __init__(self) -> None:
        self.keys_by_hash = {hash_api_key(ADMIN_KEY): record(1, ADMIN_KEY, "ops", True),
                             hash_api_key(ANN_KEY): record(2, ANN_KEY, "ann", False)}
        self.asked_for: list[str | None] = []

    async def signed_in_key(self, key_hash: str) -> KeyRecord | None:
        return self.keys_by_hash.get(key_hash)

    async def key(self, key_id: int) -> KeyRecord | None:
        return next((r for r in self.keys_by_hash.values() if r.id == key_id), None)

    async def spend(self, user: str | None, now: datetime) -> dict[str, tuple[Decimal, Decimal]]:
        self.asked_for.append(user)
        return {"hour": (Decimal("1.5"), Decimal("0.25")), "day": (Decimal("2"), Decimal("0.5")),
                "month": (Decimal("30"), Decimal("4"))}

    async def hourly_cost(self, user, start, end):
        return {}

    async def traffic(self, user, start, end):
        return Traffic({}, 4, 4, 120.0)

    async def alerts(self, user, since, limit):
        return []

    async def keys(self, user: str | None) -> list[KeyRecord]:
        return [r for r in self.keys_by_hash.values() if user in (None, r.user_id)]

    async def usage_by_key(self, key_ids, now) -> dict[int, KeyUsage]:
        return {}

    async def breakdown(self, user, window, dimension, order, limit) -> list[BreakdownRow]:
        return [BreakdownRow("gpt-4o-mini", 8, 100, 20, Decimal("0.75"), Decimal(0), 2, Decimal("0.25"))]


class Actions:
    """KeyActions and BusActions: what the console asked the api and the bus."""

    def __init__(self) -> None:
        self.asked: list[tuple] = []

    async def create(self, as_key, user_id, tier, alias, expires_in, admin) -> CreatedKey:
        self.asked.append(("create", as_key, user_id, tier))
        return CreatedKey(3, "cw_the-new-key", "cw_the-new")

    async def revoke(self, as_key: str, key_id: int) -> None:
        self.asked.append(("revoke", as_key, key_id))

    async def dead_letters(self) -> int | None:
        return 0

    async def request_backup(self) -> str:
        self.asked.append(("backup",))
        return "backup-1"


def console_app(store: Ledger, actions: Actions, ready: bool = True):
    async def postgres() -> None:
        if not ready:
            raise ConnectionRefusedError("postgres is down")

    @asynccontextmanager
    async def resources(settings: ConsoleSettings):
        yield OpenedConsole(Console(store, None, actions, actions, Thresholds()),  # type: ignore[arg-type]
                               [("postgres", postgres)])

    settings = ConsoleSettings(_env_file=None, costwarden_config=None,  # type: ignore[call-arg]
                               console_session_secret="a-console-secret-of-the-tests")
    return create_app(settings, resources=resources)


def csrf_of(page: httpx.Response) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match, page.text
    return match[1]


async def sign_in(client: httpx.AsyncClient, key: str, next_page: str = "/") -> httpx.Response:
    form = await client.get("/signin", params={"next": next_page})
    return await client.post("/signin", data={"key": key, "csrf": csrf_of(form), "next": next_page})


async def test_without_a_session_every_page_sends_to_sign_in_and_every_answer_carries_the_security_headers():
    async with served(console_app(Ledger(), Actions())) as client:
        for page in PAGES:
            answer = await client.get(page)
            assert answer.status_code == 303 and answer.headers["location"] == f"/signin?next={page}"
            assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
            assert answer.headers["x-frame-options"] == "DENY" and answer.headers["cache-control"] == "no-store"


async def test_a_key_signs_in_to_the_page_asked_for_and_a_wrong_key_is_told_so():
    store = Ledger()
    async with served(console_app(store, Actions())) as client:
        wrong = await sign_in(client, "cw_no-such-key")
        assert wrong.status_code == 401 and "That key is unknown, revoked or expired." in wrong.text
        signed = await sign_in(client, ANN_KEY, "/keys?x=1")
        assert signed.status_code == 303 and signed.headers["location"] == "/keys?x=1"
        cookie = signed.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and ANN_KEY.lower() not in cookie
        overview = await client.get("/")
    assert overview.status_code == 200 and "Overview — ann" in overview.text
    assert store.asked_for == ["ann"]  # a user's pages read that user's figures only


async def test_the_overview_shows_what_the_cache_saved_and_costs_break_it_down_by_model():
    async with served(console_app(Ledger(), Actions())) as client:
        await sign_in(client, ANN_KEY)
        overview = (await client.get("/")).text
        costs = (await client.get("/costs?by=model")).text
    assert "Saved by the cache" in overview
    assert [f'data-period="{p}" data-value="{v}"' in overview for p, v in (("hour", "0.25"), ("day", "0.5"),
                                                                           ("month", "4"))] == [True] * 3
    assert "Hit rate" in costs and 'data-value="25.0">25.0%' in costs and 'data-value="0.25"' in costs


async def test_a_user_is_refused_the_admin_pages_and_an_admin_is_not():
    async with served(console_app(Ledger(), Actions())) as client:
        await sign_in(client, ANN_KEY)
        for page in ("/status", "/backups"):
            assert (await client.get(page)).status_code == 403
    async with served(console_app(Ledger(), Actions())) as client:
        await sign_in(client, ADMIN_KEY)
        assert (await client.get("/")).status_code == 200


@pytest.mark.parametrize(("path", "form"), [
    ("/keys", {"user_id": "bob", "tier": "pro"}), ("/keys/2/revoke", {}), ("/backups", {}), ("/signout", {}),
])
async def test_a_post_without_the_sessions_csrf_token_changes_nothing(path, form):
    actions = Actions()
    async with served(console_app(Ledger(), actions)) as client:
        await sign_in(client, ADMIN_KEY)
        for token in (None, "0" * 64):
            answer = await client.post(path, data={**form, **({"csrf": token} if token else {})})
            assert answer.status_code == 403 and "CSRF" in answer.text
        assert (await client.get("/")).status_code == 200  # still signed in
    assert actions.asked == []


async def test_an_admin_creates_a_key_shown_once_as_its_own_key():
    actions = Actions()
    async with served(console_app(Ledger(), actions)) as client:
        await sign_in(client, ADMIN_KEY)
        csrf = csrf_of(await client.get("/keys"))
        made = await client.post("/keys", data={"user_id": "bob", "tier": "pro", "csrf": csrf})
        assert made.status_code == 303 and made.headers["location"] == "/keys?created=3"
        assert "cw_the-new-key" in (await client.get("/keys?created=3")).text
        assert "cw_the-new-key" not in (await client.get("/keys?created=3")).text  # shown once
    assert actions.asked == [("create", ADMIN_KEY, "bob", "pro")]


async def test_a_revoked_key_ends_its_session():
    store = Ledger()
    async with served(console_app(store, Actions())) as client:
        await sign_in(client, ANN_KEY)
        digest = hash_api_key(ANN_KEY)
        store.keys_by_hash[digest] = replace(store.keys_by_hash[digest], revoked_at=utc_now() - timedelta(seconds=1))
        answer = await client.get("/")
    assert answer.status_code == 303 and answer.headers["location"] == "/signin?next=/"
    assert 'cw_session=""' in answer.headers["set-cookie"]


async def test_ready_while_postgres_answers():
    async with served(console_app(Ledger(), Actions(), ready=False)) as client:
        assert (await client.get("/health/ready")).status_code == 503
        assert (await client.get("/health/live")).status_code == 200
    async with served(console_app(Ledger(), Actions())) as client:
        assert (await client.get("/health/ready")).status_code == 200
