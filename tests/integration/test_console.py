"""The console in a real browser (Debian's chromium, driven by Playwright; never a downloaded browser)
over the whole system as `make run` starts it. Calls go through the real gateway; every figure the test
reads on a page is checked against the database; a screenshot of each page lands in docs/console/."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import shutil
import tempfile
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import asyncpg
import httpx
import nats
import pytest
from playwright.async_api import Browser, Page, async_playwright

from shared.bus import inbox_prefix
from shared.events import Alert
from tests.conftest import migrated_database, unique
from tests.integration.helpers import auth, chat_body, new_key
from tests.integration.system import costwarden_run
from tests.servers import ROOT, s3_server
from tests.support.polling import eventually

pytestmark = pytest.mark.system

# Each page's screenshot goes to a scratch folder, so that a test run leaves the work tree as it was;
# CONSOLE_SCREENSHOTS=docs/console refreshes the pictures the docs show.
SCREENSHOTS = ROOT / os.environ["CONSOLE_SCREENSHOTS"] if os.environ.get("CONSOLE_SCREENSHOTS") else \
    Path(tempfile.gettempdir()) / "costwarden-console-screenshots"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
async def system(pg_server_url, redis_url, tmp_path_factory):
    server, s3 = s3_server("cw-console")
    try:
        async with migrated_database(pg_server_url) as database_url:
            with costwarden_run(database_url, redis_url, s3, tmp_path_factory.mktemp("console-run")) as running:
                yield running
    finally:
        server.stop()


@pytest.fixture(scope="module")
async def browser():
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("chromium is missing: install Debian's chromium package (make test does)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield launched
        await launched.close()


async def ledger(database_url: str, sql: str, *args):
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def value(text: str | None) -> Decimal:
    assert text not in (None, ""), "the page shows no figure"
    return Decimal(text)


async def signed_in(browser: Browser, console: str, key: str) -> Page:
    page = await (await browser.new_context(base_url=console, viewport={"width": 1280, "height": 900})).new_page()
    answer = await page.goto("/")
    assert "/signin" in page.url  # no session: sent to sign in
    assert answer is not None and "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    await page.fill("#key", key)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{console}/")
    return page


async def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
async def traffic(system):
    """Calls of two users through the gateway (one denied past its tier), an alert delivered to Slack,
    a dead letter; returns the users' keys once the cost service has recorded every call."""
    api, db = system["url"]["api"], system["database_url"]
    alice, bob = unique("alice"), unique("bob")
    keys = {"alice": await new_key(db, alice, "pro"), "bob": await new_key(db, bob, "free")}
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        for i in range(6):
            answer = await client.post("/v1/chat/completions", json=chat_body(max_tokens=8 + i),
                                       headers={**auth(keys["alice"]), "X-Costwarden-Tags": f"feature=search{i % 2}"})
            assert answer.status_code == 200, answer.text
        answer = await client.post("/v1/chat/completions", json=chat_body(model="meta-llama/Llama-3-70b-chat-hf"),
                                   headers=auth(keys["alice"]))
        assert answer.status_code == 200
        statuses = [(await client.post("/v1/chat/completions", json=chat_body(), headers=auth(keys["bob"]))).status_code
                    for _ in range(12)]
    assert statuses.count(429) == 2
    nc = await nats.connect(f"nats://127.0.0.1:{system['ports']['NATS']}", nkeys_seed=str(system["admin_seed"]),
                            inbox_prefix=inbox_prefix("admin"))
    alert_key = unique("cost:all:hour")
    try:
        js = nc.jetstream()
        alert = Alert(key=alert_key, source="cost", severity="warning", title="LLM Cost Alert",
                      text="WARNING: Hourly LLM cost ($12.00) exceeded warning threshold ($10)", period="hourly",
                      threshold=Decimal(10), actual=Decimal(12), overage=Decimal(2), window="2026-11-28T08:00:00+00:00")
        await js.publish("alert.cost.warning", alert.model_dump_json().encode(), stream="ALERTS")
        await js.publish("llm.completed", b"{not json", stream="LLM")
    finally:
        await nc.close()

    async def recorded() -> bool:
        rows = await ledger(db, "SELECT count(*) AS n FROM llm_usage WHERE user_id = ANY($1)", [alice, bob])
        violations = await ledger(db, "SELECT count(*) AS n FROM rate_limit_violations WHERE user_id = $1", bob)
        delivered = await ledger(db, "SELECT count(*) AS n FROM alert_deliveries WHERE alert_key = $1"
                                     " AND status = 'sent'", alert_key)
        return rows[0]["n"] == 17 and violations[0]["n"] == 2 and delivered[0]["n"] >= 1

    assert await eventually(recorded, 60)
    return {"alice": alice, "bob": bob, "keys": keys, "alert_key": alert_key,
            "admin": (system["folder"] / ".run" / "admin-key").read_text().strip()}


async def test_an_admin_sees_every_page_with_the_ledgers_figures(system, browser, traffic):
    console, db = system["url"]["console"], system["database_url"]
    page = await signed_in(browser, console, traffic["admin"])  # the key make run created

    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    spent_today = (await ledger(db, "SELECT coalesce(sum(cost), 0) AS c FROM llm_usage WHERE created_at >= $1",
                                today))[0]["c"]
    assert spent_today > 0
    assert value(await page.get_attribute("[data-period=day] .figure", "data-value")) == spent_today
    assert value(await page.get_attribute("[data-period=month] .figure", "data-value")) == spent_today
    shown = await page.inner_text("[data-period=day] .figure")
    assert spent_today < Decimal("0.01") and shown == f"${spent_today.quantize(Decimal('0.000001')):,}"
    calls = (await ledger(db, "SELECT count(*) AS n, count(*) FILTER (WHERE success) AS ok FROM llm_usage"))[0]
    assert value(await page.get_attribute("[data-stat=requests] .figure", "data-value")) == calls["n"]
    assert await page.locator("svg.chart rect.bar").count() == 48
    assert traffic["alert_key"] in (await page.inner_text("#alerts-today")) or "Hourly LLM cost" in (
        await page.inner_text("#alerts-today"))
    await screenshot(page, "overview")

    await page.goto("/costs?range=24h&by=model&sort=cost&top=20")
    window_start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=23)
    by_model = {row["model"]: row["c"] for row in await ledger(
        db, "SELECT model, sum(cost) AS c FROM llm_usage WHERE created_at >= $1 GROUP BY model", window_start)}
    rows = page.locator("#breakdown tbody tr")
    shown_models = {await rows.nth(i).get_attribute("data-key"): value(
        await rows.nth(i).locator("td").nth(4).get_attribute("data-value")) for i in range(await rows.count())}
    assert shown_models == by_model
    costs = list(by_model.values())
    assert [shown_models[k] for k in shown_models] == sorted(costs, reverse=True)  # sorted by cost
    async with page.expect_download() as download_info:
        await page.click("#csv")
    exported = list(csv.DictReader(io.StringIO(Path(await (await download_info.value).path()).read_text())))
    assert {row["model"]: Decimal(row["cost_usd"]) for row in exported} == by_model
    assert await page.inner_text("select[name=by] option[value=served_model]") == "served model"
    await page.select_option("select[name=by]", "served_model")
    await page.click("form.filters button[type=submit]")
    await page.wait_for_url("**by=served_model**")
    by_served = {row["served_model"]: row["c"] for row in await ledger(
        db, "SELECT served_model, sum(cost) AS c FROM llm_usage WHERE created_at >= $1 GROUP BY 1", window_start)}
    rows = page.locator("#breakdown tbody tr")
    assert {await rows.nth(i).get_attribute("data-key"): value(
        await rows.nth(i).locator("td").nth(4).get_attribute("data-value")) for i in range(await rows.count())} \
        == by_served
    assert await page.inner_text("#breakdown thead th >> nth=0") == "served model"
    await page.goto("/costs?range=24h&by=tag&sort=key")
    tags = {row["t"]: row["c"] for row in await ledger(
        db, "SELECT t.key || '=' || t.value AS t, sum(cost) AS c FROM llm_usage, jsonb_each_text(tags) t"
            " WHERE created_at >= $1 GROUP BY 1", window_start)}
    rows = page.locator("#breakdown tbody tr")
    assert {await rows.nth(i).get_attribute("data-key"): value(
        await rows.nth(i).locator("td").nth(4).get_attribute("data-value")) for i in range(await rows.count())} == tags
    tomorrow = today + timedelta(days=1)
    await page.goto(f"/costs?range=custom&start={today:%Y-%m-%d}&end={tomorrow:%Y-%m-%d}&by=endpoint")
    by_endpoint = {row["endpoint"]: row["c"] for row in await ledger(
        db, "SELECT endpoint, sum(cost) AS c FROM llm_usage WHERE created_at >= $1 GROUP BY 1", today)}
    rows = page.locator("#breakdown tbody tr")
    assert {await rows.nth(i).get_attribute("data-key"): value(
        await rows.nth(i).locator("td").nth(4).get_attribute("data-value")) for i in range(await rows.count())} \
        == by_endpoint
    bad = await page.goto("/costs?range=custom&start=yesterday&end=today")
    assert bad is not None and bad.status == 400 and "start must be a date" in await page.inner_text("main")
    await page.goto("/costs?range=7d&by=user&sort=cost")
    await page.click("#breakdown th >> text=Requests")  # a column's heading sorts by it
    counts = [int(await cell.get_attribute("data-value") or 0)
              for cell in await page.locator("#breakdown tbody tr td:nth-child(2)").all()]
    assert "sort=requests" in page.url and counts == sorted(counts, reverse=True) and len(counts) >= 2
    await screenshot(page, "costs")

    await page.goto("/limits")
    denials = (await ledger(db, "SELECT count(*) AS n FROM rate_limit_violations"))[0]["n"]
    assert value(await page.get_attribute("#denials-total", "data-value")) == denials == 2
    assert f"user {traffic['bob']}" in await page.inner_text("#denied-callers")
    await screenshot(page, "limits")

    await page.goto("/alerts")
    row = page.locator(f"tr[data-alert-key='{traffic['alert_key']}']")
    assert (await row.locator("td[data-channel=slack]").inner_text()).startswith("sent")
    nc = await nats.connect(f"nats://127.0.0.1:{system['ports']['NATS']}", nkeys_seed=str(system["admin_seed"]),
                            inbox_prefix=inbox_prefix("admin"))
    dlq = (await nc.jetstream().stream_info("DLQ")).state.messages
    await nc.close()
    assert dlq >= 1 and value(await page.get_attribute("#dead-letters", "data-value")) == dlq
    await screenshot(page, "alerts")

    await page.goto("/status")
    for name in ("database", "redis", "nats"):
        assert await page.inner_text(f"#dependencies tr[data-name={name}] td:nth-child(2)") == "healthy"
    assert await page.inner_text("#breakers tr[data-name=together_ai] td:nth-child(2)") == "closed"
    await screenshot(page, "health")

    await page.goto("/backups")
    await page.click("text=Run a backup now")
    await page.wait_for_url("**/backups?requested=*")

    async def backed_up():
        found = await ledger(db, "SELECT id, sha256, size_bytes FROM backup_logs WHERE status = 'success'")
        return found[0] if found else None

    backup = await eventually(backed_up, 60)
    assert backup is not None
    await page.reload()
    shown = page.locator(f"#backups tr[data-id='{backup['id']}']")
    assert backup["sha256"] in await shown.inner_text()
    assert value(await shown.locator("td").nth(4).get_attribute("data-value")) == backup["size_bytes"]
    await screenshot(page, "backups")


async def test_an_admin_creates_and_revokes_a_key_that_works_through_the_gateway(system, browser, traffic):
    console, api = system["url"]["console"], system["url"]["api"]
    page = await signed_in(browser, console, traffic["admin"])
    await page.goto("/keys")
    user = unique("carol")
    await page.fill("input[name=user_id]", user)
    await page.select_option("select[name=tier]", "pro")
    await page.fill("input[name=alias]", "carol's laptop")
    await page.click("text=Create key")
    key = (await page.inner_text("#new-key")).strip()
    assert key.startswith("cw_")
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        assert (await client.post("/v1/chat/completions", json=chat_body(), headers=auth(key))).status_code == 200
        await page.reload()  # a reload shows the list, never the key again (and creates nothing)
        assert await page.locator("#new-key").count() == 0
        await screenshot(page, "keys")
        row = page.locator("#keys tbody tr", has_text=user)
        assert await row.count() == 1
        key_id = await row.get_attribute("data-key-id")

        async def recorded():
            return (await ledger(system["database_url"], "SELECT sum(cost) AS c FROM llm_usage WHERE api_key_id = $1",
                                 int(key_id)))[0]["c"]

        spent = await eventually(recorded, 30)
        await page.reload()
        assert value(await row.locator("td").nth(9).get_attribute("data-value")) == spent > 0  # the key's own
        await row.locator("text=Revoke").click()
        await page.wait_for_url(f"**/keys?revoked={key_id}")
        assert await page.inner_text(f"tr[data-key-id='{key_id}'] .state") == "revoked"
        assert (await client.post("/v1/chat/completions", json=chat_body(), headers=auth(key))).status_code == 401
    audit = await ledger(system["database_url"], "SELECT action, actor FROM api_key_audit WHERE key_id = $1"
                                                 " ORDER BY id", int(key_id))
    assert [(a["action"], a["actor"]) for a in audit] == [("create", "admin-api:admin"), ("revoke", "admin-api:admin")]


async def test_a_user_sees_only_their_own_usage(system, browser, traffic):
    console, db = system["url"]["console"], system["database_url"]
    page = await signed_in(browser, console, traffic["keys"]["alice"])
    alice = traffic["alice"]
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    own = (await ledger(db, "SELECT sum(cost) AS c, count(*) AS n FROM llm_usage WHERE user_id = $1"
                            " AND created_at >= $2", alice, today))[0]
    everyone = (await ledger(db, "SELECT sum(cost) AS c FROM llm_usage"))[0]["c"]
    assert own["c"] < everyone
    assert value(await page.get_attribute("[data-period=day] .figure", "data-value")) == own["c"]
    assert value(await page.get_attribute("[data-stat=requests] .figure", "data-value")) == own["n"]
    assert await page.locator("nav >> text=Backups").count() == 0

    await page.goto("/costs?range=24h&by=user")
    keys = [await row.get_attribute("data-key") for row in await page.locator("#breakdown tbody tr").all()]
    assert keys == [alice]
    await page.goto("/costs?range=24h&by=model")
    by_model = {row["model"]: row["c"] for row in await ledger(
        db, "SELECT model, sum(cost) AS c FROM llm_usage WHERE user_id = $1 GROUP BY model", alice)}
    rows = page.locator("#breakdown tbody tr")
    assert {await rows.nth(i).get_attribute("data-key"): value(
        await rows.nth(i).locator("td").nth(4).get_attribute("data-value")) for i in range(await rows.count())} == by_model
    await page.goto("/keys")
    listed = await page.locator("#keys tbody tr td:nth-child(3)").all_inner_texts()
    assert listed == [alice]
    assert value(await page.get_attribute("#keys tbody tr td:nth-child(10)", "data-value")) == own["c"]  # one key
    assert await page.locator("text=Create key").count() == 0
    await page.goto("/limits")
    assert value(await page.get_attribute("#denials-total", "data-value")) == 0  # bob's denials are not hers
    for admin_page in ("/status", "/backups"):
        answer = await page.goto(admin_page)
        assert answer is not None and answer.status == 403


async def test_an_admin_sets_a_teams_budget_on_the_limits_page_and_the_teams_page_shows_its_spend(
        system, browser, traffic):
    console, api, db = system["url"]["console"], system["url"]["api"], system["database_url"]
    page = await signed_in(browser, console, traffic["admin"])
    team, dora, eli = unique("research"), unique("dora"), unique("eli")
    await page.goto("/teams")
    await page.fill("input[name=team_id]", team)
    await page.fill("input[name=name]", "Research")
    await page.fill("input[name=members]", f"{dora}, {eli}")
    await page.click("text=Create team")
    await page.wait_for_url(f"**/teams#team-{team}")
    section = page.locator(f"section[data-team='{team}']")
    assert sorted(await section.locator("table.members tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.user)")) == sorted([dora, eli])
    key = await new_key(db, dora, "pro")  # made after she joined: in her team

    await page.goto("/limits")
    await page.select_option("select[name=scope]", "team")
    await page.fill("input[name=scope_id]", team)
    await page.fill("textarea[name=budgets]", "0.0005 day Europe/Berlin")
    await page.fill("input[name=soft]", "50%, 80%")
    await page.click("text=Save limits")
    await page.wait_for_url("**/limits?saved=*")
    row = page.locator(f"#budgets tr[data-scope='team:{team}']")
    assert value(await row.locator("td.budget").get_attribute("data-value")) == Decimal("0.0005")
    assert "day (Europe/Berlin)" in await row.locator("td.budget").inner_text()

    async with httpx.AsyncClient(base_url=api, timeout=30, headers=auth(key)) as client:
        await asyncio.sleep(2)  # every limiter has the new limits by now
        statuses = [(await client.post("/v1/chat/completions", json=chat_body(max_tokens=400))) for _ in range(6)]
    denied = [a for a in statuses if a.status_code == 429]
    assert denied and denied[0].json()["scope"] == "team" and denied[0].json()["timezone"] == "Europe/Berlin"
    admitted = [a.headers["x-request-id"] for a in statuses if a.status_code == 200]

    async def spent():
        rows = await ledger(db, "SELECT count(*) AS n, sum(cost) AS c FROM llm_usage WHERE team_id = $1", team)
        return rows[0]["c"] if rows[0]["n"] == len(admitted) else None

    total = await eventually(spent, 30)
    assert total is not None and 0 < total <= Decimal("0.0005")
    await page.reload()
    assert value(await row.locator("td.spent").get_attribute("data-value")) == total
    assert value(await row.locator("td.remaining").get_attribute("data-value")) == Decimal("0.0005") - total
    assert (await row.locator("td.resets").inner_text()).endswith("UTC")
    await screenshot(page, "limits")

    await page.goto("/teams")
    assert value(await section.locator("[data-period=day] .figure").get_attribute("data-value")) == total
    assert value(await section.locator("[data-budget='day@Europe/Berlin'] .figure").get_attribute("data-value")) \
        == total
    assert await section.locator("table.keys tbody tr").count() == 1
    await screenshot(page, "teams")

    member = await signed_in(browser, console, key)  # a member sees the team's budget, and changes nothing
    await member.goto("/limits")
    assert await member.locator(f"#budgets tr[data-scope='team:{team}']").count() == 1
    assert await member.locator("text=Save limits").count() == 0

    await page.goto("/limits")
    await row.locator("text=Delete").click()
    await page.wait_for_url("**/limits")
    assert await page.locator(f"#budgets tr[data-scope='team:{team}']").count() == 0
    audit = await ledger(db, "SELECT action FROM admin_audit WHERE subject = $1 ORDER BY id", f"team:{team}")
    assert [a["action"] for a in audit] == ["create_team", "add_member", "add_member", "set_limits", "delete_limits"]


class EvilSite(BaseHTTPRequestHandler):
    """Another site (localhost is not the same site as 127.0.0.1) whose page posts a form to the console."""

    target = ""

    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        body = (f'<form id="f" method="post" action="{self.target}/keys"><input name="user_id" value="mallory">'
                '<input name="tier" value="enterprise"><input name="admin" value="on">'
                '<input name="csrf" value="guessed"></form><script>document.getElementById("f").submit()</script>')
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args) -> None:
        pass


async def test_forged_posts_are_refused_and_sign_out_ends_the_session(system, browser, traffic):
    console, db = system["url"]["console"], system["database_url"]
    async with httpx.AsyncClient(base_url=console) as anonymous:
        answer = await anonymous.get("/costs.csv?range=24h")
        assert answer.status_code == 303 and answer.headers["location"].startswith("/signin")

    page = await signed_in(browser, console, traffic["admin"])
    cookies = {c["name"]: c for c in await page.context.cookies()}
    assert cookies["cw_session"]["httpOnly"] and cookies["cw_session"]["sameSite"] == "Strict"
    forged = await page.context.request.post(f"{console}/keys", form={"user_id": "mallory", "tier": "pro"})
    assert forged.status == 403  # the session cookie went along, the CSRF token did not

    EvilSite.target = console
    evil = ThreadingHTTPServer(("127.0.0.1", 0), EvilSite)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        await page.goto(f"http://localhost:{evil.server_address[1]}/")
        await page.wait_for_load_state("networkidle")
        assert "/signin" in page.url  # SameSite=Strict: the cross-site post arrived without the session
    finally:
        evil.shutdown()
    made = await ledger(db, "SELECT count(*) AS n FROM api_keys WHERE user_id = 'mallory'")
    assert made[0]["n"] == 0

    await page.goto(f"{console}/")
    await page.click("text=Sign out")
    await page.wait_for_url("**/signin")
    await page.goto(f"{console}/costs")
    assert "/signin?next=/costs" in page.url
