"""Real receivers on loopback for the notifier tests: an HTTP sink playing Slack and a webhook
receiver (with injectable 429/500 answers), and an SMTP server (aiosmtpd) that keeps what it gets."""

from __future__ import annotations

import time
from email import message_from_bytes, policy

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.servers import ThreadedHttpServer, free_port


class HttpSink:
    def __init__(self) -> None:
        self.received: list[dict] = []  # every request: path, headers, body, time, status answered
        self.faults: dict[str, list[tuple[int, float | None]]] = {}  # path prefix -> answers before success
        self.server = ThreadedHttpServer(Starlette(routes=[
            Route("/{path:path}", self._handle, methods=["POST"]),
        ])).start()

    @property
    def url(self) -> str:
        return self.server.url

    def fail_next(self, prefix: str, *answers: tuple[int, float | None]) -> None:
        self.faults.setdefault(prefix, []).extend(answers)

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        queue = next((q for prefix, q in self.faults.items() if request.url.path.startswith(prefix) and q), None)
        status, retry_after = queue.pop(0) if queue else (200, None)
        self.received.append({"path": request.url.path, "headers": dict(request.headers), "body": body,
                              "at": time.monotonic(), "status": status})
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        if status == 200:
            return Response(b"ok")
        return JSONResponse({"error": "simulated"}, status_code=status, headers=headers)

    def delivered(self, prefix: str = "/") -> list[dict]:
        return [r for r in self.received if r["status"] == 200 and r["path"].startswith(prefix)]

    def stop(self) -> None:
        self.server.stop()


class _MailHandler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server, session, envelope) -> str:
        if self.sink.faults:
            return self.sink.faults.pop(0)
        self.sink.messages.append(message_from_bytes(envelope.content, policy=policy.default))
        self.sink.logins.append(bool(getattr(session, "authenticated", False)))
        return "250 Message accepted for delivery"


class SmtpSink:
    """aiosmtpd on a free port, accepting AUTH LOGIN/PLAIN for one user without TLS (loopback only)."""

    def __init__(self, username: str = "alerts", password: str = "smtp-pass-s3cret", tls_context=None) -> None:
        self.messages = []
        self.logins = []
        self.faults: list[str] = []  # SMTP replies to give before accepting, e.g. "451 try later"
        self.port = free_port()

        def authenticate(server, session, envelope, mechanism, auth_data):
            ok = auth_data.login.decode() == username and auth_data.password.decode() == password
            return AuthResult(success=ok)

        tls = {"tls_context": tls_context, "require_starttls": True} if tls_context else {}
        self.controller = Controller(_MailHandler(self), hostname="127.0.0.1", port=self.port,
                                     authenticator=authenticate, auth_require_tls=tls_context is not None, **tls)
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()


def self_signed_tls(directory) -> tuple:
    """A certificate for 127.0.0.1 and the server's TLS context; returns (context, certificate path)."""
    import datetime
    import ipaddress
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "smtp.pem", directory / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context, cert_path
