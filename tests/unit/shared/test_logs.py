"""Secrets scrubbed from logs, names and words kept."""

from __future__ import annotations

from shared.logs import scrub


def test_logs_scrub_secrets():
    line = scrub("calling with Authorization: Bearer sk-abc123 to postgresql://user:hunter2@db/x api_key=zzz")
    assert "sk-abc123" not in line and "hunter2" not in line and "zzz" not in line
    assert "https://hooks.slack.com/services/***" == scrub("https://hooks.slack.com/services/T0/B0/XYZ")
    assert scrub('{"password": "hunter2", "SMTP_PASSWORD":"x1", "token" : \'t0k\'}') == \
        '{"password": "***", "SMTP_PASSWORD":"***", "token" : \'***\'}'
    assert scrub("key sk-proj-AbCdEf0123456789xyz leaked") == "key *** leaked"


def test_logs_keep_setting_names_and_ordinary_words():
    for text in ("not checked: no OPENAI_API_KEY configured",
                 "set SMTP_PASSWORD and SMTP_USERNAME to send email",
                 "the password is required; token bucket refilled; secret santa",
                 "api key rotation scheduled", "task-1234 finished: ask sk-learn maintainers"):
        assert scrub(text) == text
