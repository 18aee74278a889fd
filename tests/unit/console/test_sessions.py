import time

import pytest
from cryptography.fernet import Fernet

from services.console.sessions import Session, SessionCodec

SESSION = Session(key="cw_secret", key_id=7, user_id="alice", admin=False, nonce="n1")


def test_a_sealed_session_opens_only_with_the_same_secret_and_hides_the_key():
    codec = SessionCodec("a-long-enough-secret", 3600)
    token = codec.seal(SESSION)
    assert "cw_secret" not in token and "alice" not in token
    assert codec.open(token) == SESSION
    assert SessionCodec("another-long-secret!", 3600).open(token) is None
    assert codec.open(token[:-4] + "AAAA") is None
    assert codec.open(Fernet(Fernet.generate_key()).encrypt(b"{}").decode()) is None
    assert codec.open(None) is None and codec.open("garbage") is None


def test_a_session_ends_after_its_lifetime():
    codec = SessionCodec("a-long-enough-secret", 1)
    token = codec.seal(SESSION)
    time.sleep(2.1)
    assert codec.open(token) is None


def test_csrf_tokens_are_bound_to_the_nonce():
    codec = SessionCodec("a-long-enough-secret", 3600)
    token = codec.csrf_token("n1")
    assert codec.csrf_ok("n1", token)
    assert not codec.csrf_ok("n2", token)
    assert not codec.csrf_ok("n1", "")
    assert not codec.csrf_ok(None, token)


def test_a_short_secret_is_refused():
    with pytest.raises(ValueError, match="at least 16"):
        SessionCodec("short", 60)
