"""What each channel sends: the original text, Slack blocks, email parts, signed webhooks."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from services.notifier.messages import (
    detail_lines,
    email_message,
    plain_text,
    sign,
    slack_payload,
    verify,
    webhook_body,
)
from shared.events import Alert


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


def test_a_budget_alert_says_whose_budget_and_when_it_resets_and_small_amounts_keep_their_digits():
    alert = Alert(key="budget:team:research:day@UTC:2026-05-01T00:00:00+00:00:0.8", source="cost",
                  severity="warning", title="LLM Budget Alert", text="WARNING: team research has spent ...",
                  period="day (UTC)", threshold=Decimal("0.0016"), actual=Decimal("0.00171"),
                  overage=Decimal("0.00011"), scope="team:research", resets_at=datetime(2026, 5, 2, tzinfo=UTC))
    assert detail_lines(alert) == ["Scope: team:research", "Period: day (UTC)", "Threshold: $0.0016",
                                   "Actual Cost: $0.00171", "Overage: $0.00011", "Resets: 2026-05-02 00:00 UTC"]
