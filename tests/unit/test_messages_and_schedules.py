from __future__ import annotations

from decimal import Decimal

from services.notifier.messages import email_message, plain_text, sign, slack_payload, verify, webhook_body
from services.notifier.routing import channels_for
from shared.events import Alert
from shared.settings import DEFAULT_ROUTES, Route


def alert(i: int = 0, severity: str = "critical", source: str = "cost", text: str | None = None) -> Alert:
    return Alert(key=f"k{i}", source=source, severity=severity, title="LLM Cost Alert",
                 text=text or f"{severity.upper()}: Hourly LLM cost ($52.34) exceeded {severity} threshold ($50)",
                 period="hourly", threshold=Decimal(50), actual=Decimal("52.34"), overage=Decimal("2.34"))


def test_plain_text_keeps_the_original_layout():
    assert plain_text(alert()) == (
        "🚨 LLM Cost Alert\n\nCRITICAL: Hourly LLM cost ($52.34) exceeded critical threshold ($50)\n\n"
        "Period: hourly\nThreshold: $50\nActual Cost: $52.34\nOverage: $2.34")


def test_slack_digest_stays_within_block_kit_limits():
    alerts = [alert(i, text="x" * 5000) for i in range(200)]
    payload = slack_payload(alerts)
    assert len(payload["blocks"]) == 50
    assert payload["blocks"][-1]["elements"][0]["text"] == "…and 152 more alerts"
    assert all(len(b["text"]["text"]) <= 3000 for b in payload["blocks"] if b["type"] == "section")
    assert len(payload["text"]) <= 3000 and payload["blocks"][0]["text"]["text"] == "🚨 200 costwarden alerts"
    single = slack_payload([alert(text="y" * 5000)])
    assert len(single["blocks"][1]["text"]["text"]) == 3000


def test_email_has_text_and_html_parts_and_escapes_html():
    message = email_message([alert(text="<script>bad</script>")], "from@example.com", "to@example.com")
    assert message.get_body(("plain",)).get_content().startswith("🚨 LLM Cost Alert")
    html = message.get_body(("html",)).get_content()
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_webhook_signature_round_trip():
    body = webhook_body([alert()])
    signature = "sha256=" + sign(b"secret", "1700000000", body)
    assert verify(b"secret", "1700000000", body, signature)
    assert not verify(b"secret", "1700000001", body, signature)  # the timestamp is signed too
    assert not verify(b"secret", "1700000000", body + b" ", signature)


def test_routes_pick_channels_by_severity_and_source():
    configured = {"slack", "email", "webhook"}
    assert channels_for(alert(severity="warning"), DEFAULT_ROUTES, configured) == ["slack", "webhook"]
    assert channels_for(alert(severity="critical"), DEFAULT_ROUTES, configured) == ["slack", "email", "webhook"]
    assert channels_for(alert(severity="critical"), DEFAULT_ROUTES, {"slack"}) == ["slack"]
    routes = [Route(severities=["critical"], sources=["backup"], channels=["email"]), *DEFAULT_ROUTES]
    assert channels_for(alert(source="backup"), routes, configured) == ["email"]
    assert channels_for(alert(source="cost"), routes, configured) == ["slack", "email", "webhook"]


def test_backup_slots_follow_the_cron_schedule():
    from datetime import UTC, datetime

    from services.backup.s3_backup_store import backup_name, created_at_of
    from services.backup.scheduler import next_slot

    after = datetime(2026, 11, 27, 2, 0, 0, tzinfo=UTC)
    assert next_slot("0 2 * * *", after) == datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
    assert next_slot("0 2 * * *", datetime(2026, 11, 27, 1, 59, tzinfo=UTC)) == after
    assert created_at_of(backup_name(after)) == after and created_at_of("notes.txt") is None


def test_backup_names_are_unique_sort_by_time_and_old_names_still_read():
    from datetime import UTC, datetime, timedelta

    from services.backup.s3_backup_store import backup_name, created_at_of

    at = datetime(2026, 11, 28, 2, 28, 28, 123456, tzinfo=UTC)
    assert backup_name(at, "ab12cd") == "costwarden_backup_20261128_022828_123_ab12cd.dump.gz"
    same_second = {backup_name(at) for _ in range(50)}
    assert len(same_second) == 50
    later = backup_name(at + timedelta(milliseconds=1))
    assert max(same_second) < later  # names sort as their times do
    assert created_at_of(later) == datetime(2026, 11, 28, 2, 28, 28, 124000, tzinfo=UTC)
    old = "costwarden_backup_20261128_022828.dump.gz"
    assert created_at_of(old) == datetime(2026, 11, 28, 2, 28, 28, tzinfo=UTC) and old < min(same_second)
    assert created_at_of("costwarden_backup_20261128_022828_123_XYZ.dump.gz") is None
