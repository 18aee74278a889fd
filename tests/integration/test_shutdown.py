"""SIGTERM drains in-flight work: a request under way when the gateway is told to stop still gets its
answer and its llm.completed event."""

from __future__ import annotations

import asyncio
import signal

import httpx
import pytest

from services.simulator.app import create_app as create_simulator
from tests.conftest import set_faults, sim_stats, start_service, unique
from tests.integration.helpers import auth, chat_body, new_key, stream_messages
from tests.servers import ThreadedHttpServer
from tests.support.polling import eventually

pytestmark = pytest.mark.service


async def test_sigterm_lets_an_in_flight_call_finish(base_env, limiter, database_url, nc):
    slow = ThreadedHttpServer(create_simulator("together_ai")).start()
    set_faults(slow, delay_s=1.5)
    api = start_service("api", {**base_env, "TOGETHER_BASE_URL": f"{slow.url}/v1"}, "API_PORT")
    key = await new_key(database_url, unique("drain"), "pro")
    try:
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
            call = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body(), headers=auth(key)))
            assert await eventually(lambda: sim_stats(slow)["completions"] == 1)  # the call is under way
            api.process.send_signal(signal.SIGTERM)
            response = await call
        code = await asyncio.to_thread(api.process.wait, 30)
    finally:
        api.stop()
        slow.stop()
    assert response.status_code == 200 and response.json()["choices"]
    assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has drained
    request_id = response.headers["x-request-id"]
    events = [e for e in await stream_messages(nc.jetstream(), "LLM", "llm.completed")
              if e.get("request_id") == request_id]
    assert len(events) == 1 and events[0]["success"] is True
