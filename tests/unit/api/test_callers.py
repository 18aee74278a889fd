"""Who is calling: the client address behind trusted proxies; key lifetimes."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.api.callers import client_ip, parse_networks
from services.keys.key_admin import parse_lifetime


def test_client_ip_honours_forwarded_for_only_from_trusted_proxies():
    trusted = parse_networks(["10.0.0.0/8"])
    assert client_ip("192.0.2.9", "198.51.100.1", trusted) == "192.0.2.9"
    assert client_ip("10.0.0.5", "198.51.100.1", trusted) == "198.51.100.1"
    # a client cannot hide behind a forged first hop: the rightmost untrusted address wins
    assert client_ip("10.0.0.5", "203.0.113.7, 198.51.100.1, 10.1.1.1", trusted) == "198.51.100.1"
    assert client_ip("10.0.0.5", "not-an-ip", trusted) == "10.0.0.5"


def test_a_key_lifetime_is_a_whole_number_and_a_unit():
    assert [parse_lifetime(t) for t in ("30d", "12h", "45m", "0s")] == [
        timedelta(days=30), timedelta(hours=12), timedelta(minutes=45), timedelta(0)]
    for wrong in ("", "d", "30", "1.5h", "-1d", "3w"):
        with pytest.raises(ValueError, match="not a duration"):
            parse_lifetime(wrong)
