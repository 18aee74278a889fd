"""An app's routes served in this process, with no socket and no server: its lifespan is run, then
httpx calls it through ASGI. The app is given its resources (create_app's `resources`) as fakes of
its ports."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI


@asynccontextmanager
async def served(app: FastAPI, **client_options) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `app` while its lifespan runs; requests come from 127.0.0.1."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", **client_options) as client:
            yield client
