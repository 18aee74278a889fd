"""The running services' own view, asked over HTTP: every dependency from the health service's
/health/dependencies, and each provider's circuit breaker from the api's /health/ready."""

from __future__ import annotations

import logging
from typing import Any

import httpx

from services.console.console import DependencyRow

log = logging.getLogger(__name__)


class HttpxLiveStatus:
    def __init__(self, client: httpx.AsyncClient, health_url: str, api_url: str) -> None:
        self.client, self.health_url, self.api_url = client, health_url.rstrip("/"), api_url.rstrip("/")

    async def _json(self, url: str) -> dict[str, Any] | None:
        """The document, whatever its status (a 503 still says what is down); None when no one answers."""
        try:
            answer = await self.client.get(url, timeout=3)
            document: dict[str, Any] = answer.json()
            return document
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("%s did not answer: %s", url, type(exc).__name__)
            return None

    async def dependencies(self) -> list[DependencyRow] | None:
        document = await self._json(f"{self.health_url}/health/dependencies")
        if document is None:
            return None
        return [DependencyRow(name, entry.get("status", "unknown"), entry.get("latency"), entry.get("lastChecked"),
                              int(entry.get("failuresInARow", 0)), entry.get("message") or "")
                for name, entry in document.get("dependencies", {}).items()]

    async def breakers(self) -> dict[str, str] | None:
        document = await self._json(f"{self.api_url}/health/ready")
        return None if document is None else dict(document.get("providers", {}))
