"""The notifier as a process on real NATS and Postgres, delivering to a real SMTP server and HTTP
receivers on loopback.

Most tests share one notifier (`stack`): each starts once that notifier has handled every alert of the
tests before it, with the receivers emptied, and reads only its own alerts' rows. Tests that start,
kill or configure notifiers of their own get a bus and receivers of their own (`own_stack`)."""

from __future__ import annotations

import asyncio
import json
import signal
from datetime import timedelta
from decimal import Decimal

import asyncpg
import httpx
import nats
import nats.js.errors
import pytest

from services.notifier.messages import verify
from services.notifier.settings import NotifierSettings
from shared.events import Alert
from tests.conftest import migrated_database, unique
from tests.integration.helpers import stream_messages
from tests.integration.service_tests import all_acked, start_all, stop_all
from tests.servers import nats_server
from tests.sinks import HttpSink, SmtpSink
from tests.support.polling import eventually

pytestmark = pytest.mark.service

SLACK_SECRET_PATH = "/services/T000/B000/slack-url-s3cret"
WEBHOOK_SECRET = "signing-s3cret"
SMTP_PASSWORD = "smtp-pass-s3cret"
# Only the burst test is about grouping: it keeps the default window; the others need no wait for a
# second alert to come along.
SHORT_GROUP_WINDOW_S = "0.1"
DEFAULT_GROUP_WINDOW_S = NotifierSettings.model_fields["notify_group_window_s"].default
SHARED_REPEAT_INTERVAL_S = 3.0


def notifier_env(base_env: dict[str, str], nats_url: str, database_url: str, http_sink: HttpSink,
                 smtp: SmtpSink) -> dict[str, str]:
    """Every channel, to these receivers; retries quick (no test here is about their exact delays)."""
    return {**base_env, "NATS_URL": nats_url, "DATABASE_URL": database_url,
            "SLACK_WEBHOOK_URL": f"{http_sink.url}/slack{SLACK_SECRET_PATH}",
            "ALERT_WEBHOOK_URL": f"{http_sink.url}/hook/incoming", "ALERT_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp.port), "SMTP_USERNAME": "alerts",
            "SMTP_PASSWORD": SMTP_PASSWORD, "ALERT_EMAIL": "oncall@example.com",
            "NOTIFY_BACKOFF_INITIAL_S": "0.05", "NOTIFY_BACKOFF_MAX_S": "0.2", "NOTIFY_CLAIM_LEASE_S": "3",
            "NOTIFY_GROUP_WINDOW_S": SHORT_GROUP_WINDOW_S}


@pytest.fixture(scope="module")
async def alerts_database(pg_server_url):
    """The module's database: every test reads only the rows of its own alerts (their keys are its own)."""
    async with migrated_database(pg_server_url) as url:
        yield url


@pytest.fixture(scope="module")
async def shared_stack(base_env, alerts_database):
    nats_srv, nats_url = nats_server()
    http_sink, smtp = HttpSink(), SmtpSink(password=SMTP_PASSWORD)
    env = {**notifier_env(base_env, nats_url, alerts_database, http_sink, smtp),
           "NOTIFY_REPEAT_INTERVAL_S": str(SHARED_REPEAT_INTERVAL_S)}
    [notifier] = await start_all("notifier", "NOTIFIER_PORT", [env])
    nc = await nats.connect(nats_url)
    pool = await asyncpg.create_pool(alerts_database)
    yield {"env": env, "nc": nc, "js": nc.jetstream(), "pool": pool, "http": http_sink, "smtp": smtp,
           "notifier": notifier}
    await stop_all([notifier])
    await nc.close()
    await pool.close()
    http_sink.stop()
    smtp.stop()
    nats_srv.stop()


@pytest.fixture
async def stack(shared_stack):
    """The shared notifier once it has handled every alert published before (nothing of an earlier test
    can land in this one), with its receivers emptied and no fault waiting."""
    assert await eventually(lambda: all_handled(shared_stack["js"])), "an earlier test left alerts unhandled"
    http, smtp = shared_stack["http"], shared_stack["smtp"]
    http.received.clear()
    http.faults.clear()
    smtp.messages.clear()
    smtp.logins.clear()
    smtp.faults.clear()
    return shared_stack


@pytest.fixture
async def own_stack(base_env, alerts_database):
    """A bus and receivers of this test's own, and `start` for its notifiers (several start at once)."""
    nats_srv, nats_url = nats_server()
    http_sink, smtp = HttpSink(), SmtpSink(password=SMTP_PASSWORD)
    env = notifier_env(base_env, nats_url, alerts_database, http_sink, smtp)
    nc = await nats.connect(nats_url)
    pool = await asyncpg.create_pool(alerts_database)
    services = []

    async def start_notifiers(count: int = 1, **overrides):
        started = await start_all("notifier", "NOTIFIER_PORT", [{**env, **overrides}] * count)
        services.extend(started)
        return started

    yield {"env": env, "nc": nc, "js": nc.jetstream(), "pool": pool, "http": http_sink, "smtp": smtp,
           "start": start_notifiers}
    await stop_all(services)
    await nc.close()
    await pool.close()
    http_sink.stop()
    smtp.stop()
    nats_srv.stop()


async def all_handled(js) -> bool:
    """Every alert on the bus acked by the notifiers, which a notifier does once it has finished with every
    channel of it: nothing published so far can still notify. A notifier that has just started may not
    have bound its consumer yet."""
    try:
        return await all_acked(js, "ALERTS", "notifier")
    except nats.js.errors.NotFoundError:
        return False


def cost_alert(severity: str = "critical", **extra) -> Alert:
    fields = dict(key=unique("cost:all:hour"), source="cost", severity=severity, title="LLM Cost Alert",
                  text=f"{severity.upper()}: Hourly LLM cost ($52.34) exceeded {severity} threshold ($50)",
                  period="hourly", threshold=Decimal(50), actual=Decimal("52.34"), overage=Decimal("2.34"),
                  window="2026-11-27T10:00:00+00:00")
    return Alert(**{**fields, **extra})


async def publish(js, alert: Alert, msg_id: str | None = None) -> None:
    await js.publish(f"alert.{alert.source}.{alert.severity}", alert.model_dump_json().encode(), stream="ALERTS",
                     headers={"Nats-Msg-Id": msg_id or unique("msg")})


async def test_critical_alert_reaches_slack_email_and_a_signed_webhook(stack):
    alert = cost_alert()
    await publish(stack["js"], alert)
    http, smtp = stack["http"], stack["smtp"]
    assert await eventually(lambda: http.delivered("/slack") and http.delivered("/hook") and smtp.messages)

    slack = json.loads(http.delivered("/slack")[0]["body"])
    assert slack["text"].startswith("🚨 LLM Cost Alert")
    assert "CRITICAL: Hourly LLM cost ($52.34) exceeded critical threshold ($50)" in slack["text"]
    assert "Period: hourly\nThreshold: $50\nActual Cost: $52.34\nOverage: $2.34" in slack["text"]
    assert slack["blocks"][0]["type"] == "header" and len(slack["blocks"]) <= 50
    fields = [f["text"] for f in slack["blocks"][2]["fields"]]
    assert fields == ["*Period:*\nhourly", "*Threshold:*\n$50", "*Actual Cost:*\n$52.34", "*Overage:*\n$2.34"]

    [mail] = smtp.messages
    assert mail["To"] == "oncall@example.com" and mail["Subject"].startswith("[CRITICAL] LLM Cost Alert")
    assert "Overage: $2.34" in mail.get_body(("plain",)).get_content()
    assert "<table>" in mail.get_body(("html",)).get_content()
    assert smtp.logins == [True]  # the notifier logged in with SMTP_USERNAME / SMTP_PASSWORD

    hook = http.delivered("/hook")[0]
    headers = hook["headers"]
    assert verify(WEBHOOK_SECRET.encode(), headers["x-costwarden-timestamp"], hook["body"],
                  headers["x-costwarden-signature"])
    assert not verify(b"wrong-secret", headers["x-costwarden-timestamp"], hook["body"], headers["x-costwarden-signature"])
    assert json.loads(hook["body"])["alerts"][0]["key"] == alert.key

    rows = await eventually(lambda: _sent(stack["pool"], alert.key, 3))
    assert sorted(r["channel"] for r in rows) == ["email", "slack", "webhook"]


async def _sent(pool, key: str, n: int):
    rows = await pool.fetch("SELECT * FROM alert_deliveries WHERE alert_key = $1 AND status = 'sent'", key)
    return rows if len(rows) >= n else None


async def test_warning_goes_to_slack_not_email(stack):
    alert = cost_alert("warning")
    await publish(stack["js"], alert)
    assert await eventually(lambda: _sent(stack["pool"], alert.key, 2))
    assert await eventually(lambda: all_handled(stack["js"]))  # done with every channel: no email can follow
    assert stack["smtp"].messages == []
    channels = {r["channel"] for r in await stack["pool"].fetch("SELECT channel FROM alert_deliveries"
                                                                " WHERE alert_key = $1", alert.key)}
    assert channels == {"slack", "webhook"}


async def test_slack_429_and_500s_are_retried_honouring_retry_after(stack):
    http = stack["http"]
    http.fail_next("/slack", (429, 1), (500, None), (500, None))
    alert = cost_alert("warning")
    await publish(stack["js"], alert)
    assert await eventually(lambda: http.delivered("/slack"))
    slack_calls = [r for r in http.received if r["path"].startswith("/slack")]
    assert [c["status"] for c in slack_calls] == [429, 500, 500, 200]
    assert slack_calls[1]["at"] - slack_calls[0]["at"] >= 0.95  # waited as Retry-After asked
    assert await eventually(lambda: all_handled(stack["js"]))  # the last attempt is recorded after Slack's answer
    rows = await stack["pool"].fetch("SELECT attempt, status, error FROM alert_deliveries WHERE alert_key = $1"
                                     " AND channel = 'slack' ORDER BY attempt", alert.key)
    assert [(r["attempt"], r["status"], r["error"]) for r in rows] == [
        (1, "retrying", "HTTP 429"), (2, "retrying", "HTTP 500"), (3, "retrying", "HTTP 500"), (4, "sent", None)]


async def test_smtp_4xx_is_retried_and_5xx_is_not(stack):
    smtp = stack["smtp"]
    smtp.faults.append("451 4.3.0 try again later")
    first = cost_alert()
    await publish(stack["js"], first)
    assert await eventually(lambda: smtp.messages)
    smtp.faults.append("554 5.7.1 rejected")
    second = cost_alert()
    await publish(stack["js"], second)
    rows = await eventually(lambda: _rows(stack["pool"], second.key, "email", "failed"))
    assert rows[0]["attempt"] == 1 and rows[0]["error"].startswith("SMTP 554")
    letter = await eventually(lambda: _letter(stack["js"], lambda m: second.key in m["payload"]))
    assert letter and letter["subject"] == "alert" and "email delivery failed: SMTP 554" in letter["reason"]
    assert len(smtp.messages) == 1


async def _rows(pool, key, channel, status):
    rows = await pool.fetch("SELECT * FROM alert_deliveries WHERE alert_key = $1 AND channel = $2 AND status = $3",
                            key, channel, status)
    return rows or None


async def _letters(js):
    return [m for m in await stream_messages(js, "DLQ", "dlq.>")] or None


async def _letter(js, matches):
    return next((m for m in await _letters(js) or [] if matches(m)), None)


async def test_an_alert_published_twice_to_two_replicas_is_delivered_once(own_stack):
    stack = own_stack
    await stack["start"](count=2)
    alert = cost_alert("warning")
    await publish(stack["js"], alert, msg_id="first")
    await publish(stack["js"], alert, msg_id="second")  # a second copy that JetStream keeps
    assert await eventually(lambda: _sent(stack["pool"], alert.key, 2))
    assert await eventually(lambda: all_handled(stack["js"]))  # both copies done with: nothing more can go out
    assert len(stack["http"].delivered("/slack")) == 1 and len(stack["http"].delivered("/hook")) == 1
    info = await stack["js"].consumer_info("ALERTS", "notifier")
    assert info.num_pending == 0


async def test_a_notifier_killed_mid_delivery_neither_loses_nor_duplicates(own_stack):
    stack = own_stack
    http = stack["http"]
    http.fail_next("/slack", (500, None))
    [notifier] = await stack["start"](NOTIFY_BACKOFF_INITIAL_S="4", NOTIFY_BACKOFF_MAX_S="4", ALERT_WEBHOOK_URL="",
                                      SMTP_HOST="")
    alert = cost_alert("warning")
    await publish(stack["js"], alert)
    assert await eventually(lambda: http.received), notifier.logs()[-3000:]  # first attempt failed; 4 s to retry
    notifier.stop(signal.SIGKILL)
    await stack["start"](ALERT_WEBHOOK_URL="", SMTP_HOST="")
    assert await eventually(lambda: http.delivered("/slack"), timeout_s=40)
    assert await eventually(lambda: all_handled(stack["js"]))  # acked: nothing left to send again
    assert [r["status"] for r in http.received] == [500, 200]


async def test_a_burst_of_50_alerts_becomes_a_few_digests(own_stack):
    stack = own_stack
    await stack["start"](SMTP_HOST="", NOTIFY_GROUP_WINDOW_S=str(DEFAULT_GROUP_WINDOW_S))
    alerts = [cost_alert("warning", text=f"WARNING: alert number {i}") for i in range(50)]
    for alert in alerts:
        await publish(stack["js"], alert)
        await asyncio.sleep(0.01)
    assert await eventually(lambda: _all_sent(stack["pool"], [a.key for a in alerts]), timeout_s=30)
    slack_messages = stack["http"].delivered("/slack")
    assert 1 <= len(slack_messages) <= 3
    for message in slack_messages:
        payload = json.loads(message["body"])
        assert len(payload["blocks"]) <= 50
        assert all(len(b["text"]["text"]) <= 3000 for b in payload["blocks"] if b["type"] == "section")
    assert "costwarden alerts" in json.loads(slack_messages[0]["body"])["text"]
    assert len(stack["http"].delivered("/hook")) <= 3


async def _all_sent(pool, keys: list[str]) -> bool:
    return await pool.fetchval("SELECT count(DISTINCT alert_key) FROM alert_deliveries WHERE channel = 'slack'"
                               " AND status = 'sent' AND alert_key = ANY($1)", keys) == len(keys)


async def test_resolved_health_alert_follows_the_original(stack):
    down = Alert(key="health:redis:down:1", source="health", severity="critical", title="Redis is down",
                 text="CRITICAL: redis failed 3 checks in a row")
    await publish(stack["js"], down)
    assert await eventually(lambda: _sent(stack["pool"], down.key, 3))
    up = Alert(key="health:redis:down:1:resolved", source="health", severity="resolved", title="Redis is back",
               text="RESOLVED: redis is healthy again", resolves=down.key)
    await publish(stack["js"], up)
    rows = await eventually(lambda: _sent(stack["pool"], up.key, 3))
    assert sorted(r["channel"] for r in rows) == ["email", "slack", "webhook"]  # email too, as the original


async def test_invalid_alerts_are_dead_lettered_and_secrets_stay_out_of_everything(stack):
    notifier = stack["notifier"]
    await stack["js"].publish("alert.cost.critical", b'{"key": "k", "severity": "apocalyptic"}')
    stack["http"].fail_next("/slack", (500, None))
    good = cost_alert()
    await publish(stack["js"], good)
    assert await eventually(lambda: _sent(stack["pool"], good.key, 3))
    invalid = await eventually(lambda: _letter(stack["js"], lambda m: m["subject"] == "alert.cost.critical"))
    letters = await _letters(stack["js"])
    assert invalid and "severity" in invalid["reason"] and invalid["service"] == "notifier"

    deliveries = json.dumps([dict(r) for r in await stack["pool"].fetch("SELECT * FROM alert_deliveries")], default=str)
    everything = notifier.logs() + deliveries + json.dumps(letters)
    for secret in ("slack-url-s3cret", WEBHOOK_SECRET, SMTP_PASSWORD):
        assert secret not in everything
    metrics = httpx.get(f"{notifier.url}/metrics").text
    assert 'costwarden_notifier_messages_total{channel="slack",outcome="sent"}' in metrics


async def test_starttls_and_login_when_configured(base_env, alerts_database, tmp_path):
    """A notifier without STARTTLS and one with it, each on a bus of its own so that both run at once."""
    from tests.sinks import self_signed_tls

    context, cert = self_signed_tls(tmp_path)
    smtp = SmtpSink(password=SMTP_PASSWORD, tls_context=context)
    (plain_bus, plain_url), (secure_bus, secure_url) = nats_server(), nats_server()
    env = {**base_env, "DATABASE_URL": alerts_database, "SMTP_HOST": "127.0.0.1",
           "SMTP_PORT": str(smtp.port), "SMTP_USERNAME": "alerts", "SMTP_PASSWORD": SMTP_PASSWORD,
           "ALERT_EMAIL": "oncall@example.com", "NOTIFY_BACKOFF_INITIAL_S": "0.2", "NOTIFY_MAX_ATTEMPTS": "2",
           "NOTIFY_GROUP_WINDOW_S": SHORT_GROUP_WINDOW_S}
    notifiers = await start_all("notifier", "NOTIFIER_PORT", [
        {**env, "NATS_URL": plain_url, "SMTP_STARTTLS": "false"},
        {**env, "NATS_URL": secure_url, "SMTP_STARTTLS": "true", "SMTP_CA_FILE": str(cert)}])
    plain_nc, secure_nc = await nats.connect(plain_url), await nats.connect(secure_url)
    pool = await asyncpg.create_pool(alerts_database)
    try:
        refused = cost_alert()
        await publish(plain_nc.jetstream(), refused)
        rows = await eventually(lambda: _rows(pool, refused.key, "email", "failed"))
        # the server offers AUTH only after STARTTLS, so a plain session cannot log in
        assert rows and "AUTH extension is not supported" in rows[0]["error"]
        delivered = cost_alert()
        await publish(secure_nc.jetstream(), delivered)
        assert await eventually(lambda: smtp.messages)
        assert smtp.logins == [True]
    finally:
        await stop_all(notifiers)
        await plain_nc.close()
        await secure_nc.close()
        await pool.close()
        smtp.stop()
        plain_bus.stop()
        secure_bus.stop()


async def test_the_same_alert_notifies_again_only_after_the_repeat_interval(stack):
    """The shared notifier repeats after SHARED_REPEAT_INTERVAL_S."""
    alert = cost_alert("warning")
    await publish(stack["js"], alert)
    assert await eventually(lambda: len(stack["http"].delivered("/slack")) == 1)
    await publish(stack["js"], alert)  # within the interval: not again
    assert await eventually(lambda: all_handled(stack["js"]))
    assert len(stack["http"].delivered("/slack")) == 1
    assert await eventually(lambda: _repeat_due(stack["pool"], alert.key))
    await publish(stack["js"], alert)  # the condition still holds after the interval: remind
    assert await eventually(lambda: len(stack["http"].delivered("/slack")) == 2)


async def _repeat_due(pool, key: str) -> bool:
    """Has the repeat interval passed since Slack got the alert, by the clock the notifier's claims use?"""
    return await pool.fetchval("SELECT claimed_at < now() - $2::interval FROM alert_claims WHERE alert_key = $1"
                               " AND channel = 'slack'", key, timedelta(seconds=SHARED_REPEAT_INTERVAL_S))
