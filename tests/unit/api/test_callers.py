"""Who is calling: the client address behind trusted proxies."""

from __future__ import annotations

from services.api.callers import client_ip, parse_networks


def test_client_ip_honours_forwarded_for_only_from_trusted_proxies():
    trusted = parse_networks(["10.0.0.0/8"])
    assert client_ip("192.0.2.9", "198.51.100.1", trusted) == "192.0.2.9"
    assert client_ip("10.0.0.5", "198.51.100.1", trusted) == "198.51.100.1"
    # a client cannot hide behind a forged first hop: the rightmost untrusted address wins
    assert client_ip("10.0.0.5", "203.0.113.7, 198.51.100.1, 10.1.1.1", trusted) == "198.51.100.1"
    assert client_ip("10.0.0.5", "not-an-ip", trusted) == "10.0.0.5"
