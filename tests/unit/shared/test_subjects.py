"""Subjects and the streams that keep them, declared once."""

from __future__ import annotations

import pytest

from shared.subjects import STREAMS, alert_subject, dead_letter_subject, stream_of


def test_every_subject_finds_its_stream_from_the_one_declaration():
    assert stream_of("llm.completed") == "LLM"
    assert stream_of(alert_subject("cost", "critical")) == "ALERTS"
    assert stream_of("alert.>") == "ALERTS"  # a consumer's wildcard within a stream
    assert stream_of("schedule.backup") == "SCHEDULE" and stream_of("backup.requested") == "BACKUP"
    assert stream_of(dead_letter_subject("alert.cost.critical")) == "DLQ"


def test_a_subject_no_stream_keeps_is_an_error_not_a_guess():
    for subject in ("llm.request", "cost.query", "llm", "alertx.cost"):
        with pytest.raises(KeyError):
            stream_of(subject)


def test_streams_do_not_overlap():
    names = [spec.name for spec in STREAMS for subject in spec.subjects if stream_of(subject) != spec.name]
    assert names == []
