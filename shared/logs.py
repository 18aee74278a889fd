"""Logging on stderr, with secrets scrubbed from every message: one JSON object per line (production,
and whenever stderr is not a terminal), or one readable line per event in a terminal (`make run`).
LOG_FORMAT chooses: `auto` (the default), `json` or `text`. FastStream's and uvicorn's own lines go
through the same handler, so that a terminal never mixes two formats."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

# Secrets are recognised by where they stand (after `Bearer`, after `key=` or `"password": `, inside a
# URL's credentials) or by their own shape (provider and costwarden keys): the value is hidden, never
# the setting's name or the words around it ("no OPENAI_API_KEY configured" stays as it is).
_ASSIGNED = r"(?:api[_-]?key|password|passwd|secret|token)[\"']?\s*[=:]\s*[\"']?"
_SECRET_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/\-]+=*"),
    re.compile(r"(?i)(\b[A-Za-z_]*" + _ASSIGNED + r")[^\s\"',;&]+"),
    re.compile(r"(://[^:/@\s]+:)[^@\s]+(@)"),
    re.compile(r"(hooks\.slack\.com/services/)[^\s\"']+"),
    re.compile(r"(\b)(?:sk-[A-Za-z0-9_\-]{16,}|cw_[A-Za-z0-9_\-]{20,})"),
)


def scrub(text: str) -> str:
    """Hide credentials that might have slipped into a message (keys, passwords, URLs with secrets)."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + "***" + (m.group(2) if m.lastindex == 2 else ""), text)
    return text


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        if record.exc_info:
            entry["exc"] = scrub(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """`12:04:05.123 api      INFO  message`: time (UTC), service, level, message."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        at = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S.%f")[:-3]
        line = f"{at} {self.service:<9} {record.levelname:<5} {scrub(record.getMessage())}"
        if record.exc_info:
            line += "\n" + scrub(self.formatException(record.exc_info))
        return line


def configure_logging(service: str, level: str = "INFO", fmt: str = "auto") -> None:
    """FastStream sets up its own logger when it is imported: a bus service's app imports it before
    calling this, and that logger is taken over below. The api, the console, the health service and
    `costwarden run` never import FastStream (a good part of a start), so nothing is to be taken over."""
    readable = fmt == "text" or (fmt == "auto" and sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter(service) if readable else JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for own_handler in ("faststream", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(own_handler)
        logger.handlers.clear()
        logger.propagate = True
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
