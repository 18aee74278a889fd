"""What a bus service answers over HTTP besides its probes: the AsyncAPI document as JSON, and nothing
that reaches the bus."""

from __future__ import annotations

import asyncio

import httpx
import pytest

pytestmark = pytest.mark.service


async def test_the_asyncapi_document_is_served_as_json(cost_service):
    async with httpx.AsyncClient(base_url=cost_service.url, timeout=10) as client:
        document = (await client.get("/docs/asyncapi.json")).json()
        page = await client.get("/docs/asyncapi")
    assert document["asyncapi"].startswith("3.") and any("cost.query" in name for name in document["channels"])
    assert page.status_code == 404  # FastStream's page loads its viewer from a CDN: blank offline


async def test_no_http_caller_can_publish_to_the_bus(cost_service, nc):
    """FastStream's AsyncAPI "try it out" endpoint would publish any payload to any subject."""
    received: list[bytes] = []

    async def on_message(msg) -> None:
        received.append(msg.data)

    sub = await nc.subscribe("alert.cost.critical", cb=on_message)
    forged = {"channelName": "alert.cost.critical", "message": {"message": {"title": "pay this invoice"}},
              "options": {"sendToRealBroker": True}}
    async with httpx.AsyncClient(base_url=cost_service.url, timeout=10) as client:
        response = await client.post("/docs/asyncapi/try", json=forged)
    await nc.flush()
    await asyncio.sleep(0.5)
    await sub.unsubscribe()
    assert response.status_code == 404 and received == []
