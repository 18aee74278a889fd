"""What a notification says on each channel, in the original alert layout. Pure: no I/O.

A message carries one alert, or several as a digest when a burst arrives together.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal
from email.message import EmailMessage
from html import escape
from typing import Any

from shared.events import Alert

SLACK_MAX_BLOCKS = 50
SLACK_MAX_SECTION_CHARS = 3000
SLACK_MAX_HEADER_CHARS = 150
ICONS = {"critical": "🚨", "warning": "⚠️", "resolved": "✅"}


def dollars(amount: Decimal | None) -> str | None:
    """$52.34, $50; an amount under a cent (a small budget's threshold) to the millionth: $0.0016."""
    if amount is None:
        return None
    if 0 < abs(amount) < Decimal("0.01"):
        return f"${amount.quantize(Decimal('0.000001'), rounding=ROUND_HALF_UP).normalize():f}"
    if amount == amount.to_integral_value():
        return f"${amount.to_integral_value():,}"
    return f"${amount.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,}"


def detail_lines(alert: Alert) -> list[str]:
    """Period / Threshold / Actual Cost / Overage, as the original Slack alert listed them; a budget's
    alert adds whose budget it is and when it resets."""
    actual_label = "Actual Cost" if alert.source == "cost" else "Actual"
    resets = alert.resets_at.strftime("%Y-%m-%d %H:%M UTC") if alert.resets_at else None
    pairs = [("Scope", alert.scope), ("Period", alert.period), ("Threshold", dollars(alert.threshold)),
             (actual_label, dollars(alert.actual)), ("Overage", dollars(alert.overage)), ("Resets", resets)]
    return [f"{label}: {value}" for label, value in pairs if value is not None]


def plain_text(alert: Alert) -> str:
    lines = [f"{ICONS.get(alert.severity, '')} {alert.title}", "", alert.text, "", *detail_lines(alert)]
    return "\n".join(lines).strip()


def digest_title(alerts: Sequence[Alert]) -> str:
    worst = "critical" if any(a.severity == "critical" for a in alerts) else alerts[0].severity
    return f"{ICONS.get(worst, '')} {len(alerts)} costwarden alerts"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_payload(alerts: Sequence[Alert]) -> dict:
    """Block Kit blocks plus a plain-text fallback, within Slack's limits (50 blocks, 3000 characters
    a section, 150 a header)."""
    if len(alerts) == 1:
        alert = alerts[0]
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "emoji": True,
                                        "text": _clip(f"{ICONS.get(alert.severity, '')} {alert.title}",
                                                      SLACK_MAX_HEADER_CHARS)}},
            {"type": "section", "text": {"type": "mrkdwn", "text": _clip(alert.text, SLACK_MAX_SECTION_CHARS)}},
        ]
        details = detail_lines(alert)
        if details:
            pairs = [line.split(": ", 1) for line in details]
            blocks.append({"type": "section", "fields": [
                {"type": "mrkdwn", "text": f"*{label}:*\n{value}"} for label, value in pairs]})
        return {"text": _clip(plain_text(alert), SLACK_MAX_SECTION_CHARS), "blocks": blocks}
    title = digest_title(alerts)
    room = SLACK_MAX_BLOCKS - 2  # header, and a last context block when some do not fit
    blocks = [{"type": "header", "text": {"type": "plain_text", "emoji": True, "text": title}}]
    for alert in alerts[:room]:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _clip(
            f"*{alert.severity.upper()}* {alert.text}", SLACK_MAX_SECTION_CHARS)}})
    if len(alerts) > room:
        blocks.append({"type": "context", "elements": [
            {"type": "mrkdwn", "text": f"…and {len(alerts) - room} more alerts"}]})
    fallback = _clip("\n".join([title, *(a.text for a in alerts)]), SLACK_MAX_SECTION_CHARS)
    return {"text": fallback, "blocks": blocks}


def email_message(alerts: Sequence[Alert], sender: str, recipient: str) -> EmailMessage:
    if len(alerts) == 1:
        subject = f"[{alerts[0].severity.upper()}] {alerts[0].title}: {alerts[0].text}"
        text = plain_text(alerts[0])
    else:
        subject = digest_title(alerts).strip()
        text = "\n\n".join(plain_text(a) for a in alerts)
    message = EmailMessage()
    message["Subject"] = _clip(subject.replace("\n", " "), 200)
    message["From"] = sender
    message["To"] = recipient
    message.set_content(text)
    html_parts = []
    for alert in alerts:
        rows = "".join(f"<tr><th align='left'>{escape(k)}</th><td>{escape(v)}</td></tr>"
                       for k, v in (line.split(": ", 1) for line in detail_lines(alert)))
        html_parts.append(f"<h2>{escape(ICONS.get(alert.severity, ''))} {escape(alert.title)}</h2>"
                          f"<p><strong>{escape(alert.text)}</strong></p><table>{rows}</table>")
    message.add_alternative(f"<html><body>{''.join(html_parts)}</body></html>", subtype="html")
    return message


def webhook_body(alerts: Sequence[Alert]) -> bytes:
    return json.dumps({"alerts": [a.model_dump(mode="json") for a in alerts]}, separators=(",", ":")).encode()


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """HMAC-SHA256 over "<timestamp>.<body>", hex; sent as X-Costwarden-Signature: sha256=<hex>."""
    return hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, header: str) -> bool:
    """What a receiver runs to check a webhook (also used by the tests)."""
    return hmac.compare_digest(header, "sha256=" + sign(secret, timestamp, body))
