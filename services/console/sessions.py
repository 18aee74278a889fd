"""Console sessions without server-side state: the session is a cookie that is encrypted and
authenticated (Fernet: AES-CBC with HMAC-SHA256, and its time of issue), so any replica that shares
CONSOLE_SESSION_SECRET can read it and no one else can read or forge it. It carries the API key that
signed in, because the key actions are made through the api's admin API as that key (audited as its user).

Forms carry a CSRF token derived from the session's own nonce; the sign-in form, before any session,
carries one derived from a nonce cookie of its own (double submit)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import asdict, dataclass

from cryptography.fernet import Fernet, InvalidToken

SESSION_COOKIE = "cw_session"
SIGNIN_COOKIE = "cw_signin"
NEW_KEY_COOKIE = "cw_new_key"


@dataclass(frozen=True)
class Session:
    key: str
    key_id: int
    user_id: str
    admin: bool
    nonce: str


def new_nonce() -> str:
    return secrets.token_urlsafe(16)


class SessionCodec:
    def __init__(self, secret: str, lifetime_s: float) -> None:
        if len(secret) < 16:
            raise ValueError("CONSOLE_SESSION_SECRET must be at least 16 characters")
        material = hashlib.sha256(b"costwarden-console-session\0" + secret.encode()).digest()
        self.fernet = Fernet(base64.urlsafe_b64encode(material))
        self.csrf_key = hashlib.sha256(b"costwarden-console-csrf\0" + secret.encode()).digest()
        self.lifetime_s = lifetime_s

    def seal(self, session: Session) -> str:
        return self.seal_text(json.dumps(asdict(session)))

    def open(self, token: str | None) -> Session | None:
        """The session in a cookie, or None when it is missing, forged, altered or older than its lifetime."""
        text = self.open_text(token, self.lifetime_s)
        try:
            return Session(**json.loads(text)) if text else None
        except (ValueError, TypeError):
            return None

    def seal_text(self, text: str) -> str:
        return self.fernet.encrypt(text.encode()).decode()

    def open_text(self, token: str | None, max_age_s: float) -> str | None:
        if not token:
            return None
        try:
            return self.fernet.decrypt(token.encode(), ttl=int(max_age_s)).decode()
        except (InvalidToken, ValueError):
            return None

    def csrf_token(self, nonce: str) -> str:
        return hmac.new(self.csrf_key, nonce.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, nonce: str | None, token: str | None) -> bool:
        return bool(nonce and token) and hmac.compare_digest(self.csrf_token(nonce or ""), token or "")
