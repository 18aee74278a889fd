"""The soak's traffic, all at once: gateway calls through the official openai SDK from callers of every
tier (plain and streaming, some streams abandoned half-way, some callers over their limits), "other
services" asking llm.request and publishing llm.completed on the bus, and malformed events and HTTP
requests of known kinds. Everything sent and every answer is recorded for the reconciliation."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from dataclasses import dataclass, field

import httpx
import nats
import openai

from shared.events import LimitRequest, LlmCompleted
from tests.conftest import unique

WORKERS = 6  # gateway callers at once
MODELS = ("meta-llama/Llama-3-8b-chat-hf", "meta-llama/Llama-3-70b-chat-hf", "gpt-4o-mini")


@dataclass
class Caller:
    key: str | None  # None: an anonymous caller, known by its address (X-Forwarded-For through a trusted proxy)
    user_id: str
    tier: str
    ip: str | None = None

    @property
    def headers(self) -> dict:
        if self.key is None:
            return {"Authorization": openai.Omit(), "X-Forwarded-For": self.ip}
        return {"Authorization": f"Bearer {self.key}"}


@dataclass
class Record:
    """What was sent and what came back."""

    gateway: list[dict] = field(default_factory=list)  # request_id, user_id, tier, status, stream, abandoned
    upstream_completed: set[str] = field(default_factory=set)  # accepted by JetStream (acked)
    upstream_requests: Counter = field(default_factory=Counter)  # allowed / denied / unavailable / failed
    malformed_events: Counter = field(default_factory=Counter)  # subject -> how many sent
    malformed_http: list[int] = field(default_factory=list)  # the statuses they got
    errors: Counter = field(default_factory=Counter)  # what the drivers themselves hit


class Traffic:
    def __init__(self, api_url: str, nats_urls: list[str], callers: list[Caller], seed: int) -> None:
        self.api_url = api_url
        self.nats_urls = nats_urls
        self.callers = callers
        self.random = random.Random(seed)
        self.record = Record()
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        nc = await nats.connect(servers=self.nats_urls, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
        client = openai.AsyncOpenAI(base_url=f"{self.api_url}/v1", api_key="unused", max_retries=0, timeout=30.0)
        try:
            await asyncio.gather(*(self.gateway_caller(client, i) for i in range(WORKERS)), self.upstream(nc),
                                 self.malformed(nc))
        finally:
            await client.close()
            await nc.close()

    async def pause(self, low: float, high: float) -> None:
        try:
            await asyncio.wait_for(self.stopping.wait(), self.random.uniform(low, high))
        except TimeoutError:
            pass

    async def gateway_caller(self, client: openai.AsyncOpenAI, worker: int) -> None:
        while not self.stopping.is_set():
            caller = self.random.choice(self.callers)
            stream = self.random.random() < 0.4
            abandon = stream and self.random.random() < 0.3
            model = self.random.choice(MODELS)
            try:
                entry = await (self.stream_call(client, caller, model, abandon) if stream
                               else self.plain_call(client, caller, model))
            except (openai.APIConnectionError, openai.APITimeoutError) as exc:
                cause = exc.__cause__ or exc
                self.record.errors[f"{type(exc).__name__} ({type(cause).__name__}: {cause})"[:120]] += 1
                entry = {"status": 0}
            self.record.gateway.append({"user_id": caller.user_id, "tier": caller.tier, "stream": stream,
                                        "abandoned": abandon, **entry})
            await self.pause(0.02, 0.15)

    async def plain_call(self, client: openai.AsyncOpenAI, caller: Caller, model: str) -> dict:
        try:
            raw = await client.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": f"soak {unique()}"}], max_tokens=24,
                extra_headers=caller.headers)
        except openai.APIStatusError as exc:
            return {"status": exc.status_code, "request_id": exc.response.headers.get("x-request-id")}
        raw.parse()
        return {"status": raw.status_code, "request_id": raw.headers.get("x-request-id")}

    async def stream_call(self, client: openai.AsyncOpenAI, caller: Caller, model: str, abandon: bool) -> dict:
        try:
            async with client.chat.completions.with_streaming_response.create(
                    model=model, messages=[{"role": "user", "content": f"soak stream {unique()}"}], max_tokens=40,
                    stream=True, extra_headers=caller.headers) as response:
                request_id = response.headers.get("x-request-id")
                chunks = 0
                async for _ in response.iter_lines():
                    chunks += 1
                    if abandon and chunks >= 2:
                        break  # the client goes away half-way: the gateway must still record the call
                return {"status": response.status_code, "request_id": request_id}
        except openai.APIStatusError as exc:
            return {"status": exc.status_code, "request_id": exc.response.headers.get("x-request-id")}

    async def upstream(self, nc) -> None:
        """Another service: asks the limiter, calls its provider itself, reports the completion."""
        js = nc.jetstream()
        while not self.stopping.is_set():
            request = LimitRequest(request_id=unique("up"), user_id=f"upstream-{self.random.randrange(4)}",
                                   tier="pro", model="gpt-4o-mini", max_tokens=32)
            try:
                reply = await nc.request("llm.request", request.model_dump_json().encode(), timeout=5)
                decision = json.loads(reply.data)
                outcome = ("unavailable" if decision.get("limited_by") == "unavailable"
                           else "allowed" if decision.get("allowed") else "denied")
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                outcome = "failed"
            self.record.upstream_requests[outcome] += 1
            if outcome == "allowed":
                done = LlmCompleted(request_id=request.request_id, user_id=request.user_id, tier="pro",
                                    provider="openai", model="gpt-4o-mini", endpoint="/internal/summarise",
                                    prompt_tokens=self.random.randrange(10, 400), completion_tokens=32,
                                    success=True, latency_ms=50, tags={"feature": "soak"})
                if await self.publish_until_acked(js, "llm.completed", done.model_dump_json().encode(),
                                                  done.request_id):
                    self.record.upstream_completed.add(done.request_id)
            await self.pause(0.05, 0.3)

    async def publish_until_acked(self, js, subject: str, body: bytes, msg_id: str) -> bool:
        """As a careful sender does: an unacknowledged publish may or may not be stored, so it is sent
        again with the same Nats-Msg-Id (the stream keeps one) until JetStream acknowledges it."""
        for attempt in range(60):
            try:
                await js.publish(subject, body, headers={"Nats-Msg-Id": msg_id}, timeout=5)
                return True
            except (nats.errors.Error, TimeoutError) as exc:
                self.record.errors[f"publish {type(exc).__name__}"] += 1
                await asyncio.sleep(min(2.0, 0.2 * (attempt + 1)))
        return False

    async def malformed(self, nc) -> None:
        """A few known-bad events and HTTP requests, spread over the run."""
        js = nc.jetstream()
        bad_events = [("llm.completed", b"{not json"), ("llm.completed", b'{"request_id": ""}'),
                      ("limit.violation", b"[]")]
        bad_http = [("/v1/chat/completions", b"{"), ("/v1/chat/completions", b'{"model": "x", "messages": []}'),
                    ("/api/agent/query", b'{"query": ""}')]
        async with httpx.AsyncClient(base_url=self.api_url, timeout=10) as http:
            while not self.stopping.is_set():
                subject, body = self.random.choice(bad_events)
                if await self.publish_until_acked(js, subject, body, unique("bad")):
                    self.record.malformed_events[subject] += 1
                path, payload = self.random.choice(bad_http)
                caller = self.random.choice([c for c in self.callers if c.key])
                try:
                    answer = await http.post(path, content=payload, headers={
                        "Authorization": f"Bearer {caller.key}", "content-type": "application/json"})
                    self.record.malformed_http.append(answer.status_code)
                except httpx.TransportError:
                    self.record.errors["malformed http"] += 1
                await self.pause(2, 6)
