"""The gateway use case with in-memory fakes of its ports: what it records for streams that end every way,
and for answers with and without the provider's usage."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from services.api.callers import Caller
from services.api.calls import CallContext
from services.api.gateway import Gateway
from services.api.providers import ProviderError, ProvidersFailed, ProviderStreamBroken
from services.api.response_cache import AnswerKeeper, CachePlan, ModelCachePolicy, ResponseCache
from shared.events import BilledAttempt
from shared.policy import ModelRoute
from tests.unit.api.fakes import MemoryStore, Recorded, Words, router_of

MODEL = "meta-llama/Llama-3-8b-chat-hf"


class FakeStream:
    def __init__(self, chunks: list[dict[str, Any]], done: bool = True, break_after: int | None = None) -> None:
        self.chunks, self.done, self.break_after = chunks, done, break_after
        self.closed = False

    async def lines(self) -> AsyncIterator[str]:
        for i, chunk in enumerate(self.chunks):
            if self.break_after is not None and i >= self.break_after:
                raise ProviderStreamBroken("ReadError")
            yield f"data: {json.dumps(chunk)}"
        if self.done:
            yield "data: [DONE]"

    async def aclose(self) -> None:
        self.closed = True


class FakeProvider:
    name = "together_ai"

    def __init__(self, answer: dict[str, Any] | None = None, stream: FakeStream | None = None) -> None:
        self.answer, self.stream = answer, stream

    async def complete(self, model: str, payload: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
        assert self.answer is not None
        return self.answer, json.dumps(self.answer).encode()

    async def open_stream(self, model: str, payload: Mapping[str, Any]) -> FakeStream:
        assert self.stream is not None
        return self.stream

    async def aclose(self) -> None: ...


ROUTE = [ModelRoute(provider="together_ai", model=MODEL)]
FALLBACK = [ModelRoute(provider="together_ai", model=MODEL), ModelRoute(provider="openai", model="gpt-4o-mini")]


def gateway(provider: FakeProvider, recorded: Recorded) -> Gateway:
    return Gateway(router_of(provider), recorded, Words())


def ctx(max_tokens: int | None = 50, routes: list[ModelRoute] = ROUTE) -> CallContext:
    return CallContext(request_id="r1", caller=Caller("ann", "pro"), client_ip="192.0.2.1", endpoint="/v1/chat",
                       model=MODEL, routes=routes, prompt_tokens=12, max_tokens=max_tokens)


def delta(text: str, finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}


async def relay_all(g: Gateway, stream: FakeStream, stop_after: int | None = None) -> list[bytes]:
    relay = await g.open_stream(ctx(), {"messages": []}, forward_usage_chunk=False)
    out = []
    async for piece in relay:
        out.append(piece)
        if stop_after is not None and len(out) == stop_after:
            break
    await relay.aclose()
    await g.drain()
    return out


async def test_a_complete_stream_with_usage_is_recorded_from_the_provider():
    stream = FakeStream([delta("one two"), delta(" three", "stop"),
                         {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}}])
    recorded = Recorded()
    out = await relay_all(gateway(FakeProvider(stream=stream), recorded), stream)
    [event] = recorded.events
    assert (event.prompt_tokens, event.completion_tokens, event.usage_source, event.success) == (9, 3, "provider", True)
    assert out[-1] == b"data: [DONE]\n\n" and len(out) == 3  # the usage chunk was not asked for
    assert stream.closed


async def test_a_stream_the_client_leaves_is_counted_closed_and_recorded_at_once():
    stream = FakeStream([delta("alpha beta"), delta(" gamma"), delta(" delta"), delta(" never")], done=False)
    recorded = Recorded()
    await relay_all(gateway(FakeProvider(stream=stream), recorded), stream, stop_after=2)
    [event] = recorded.events
    assert (event.prompt_tokens, event.completion_tokens, event.usage_source) == (12, 3, "estimated")
    assert event.success is False and event.error == "client disconnected before the stream ended"
    assert stream.closed


async def test_a_stream_the_provider_breaks_ends_with_an_error_event_and_is_billed():
    stream = FakeStream([delta("alpha"), delta(" beta"), delta(" gamma")], break_after=2)
    recorded = Recorded()
    out = await relay_all(gateway(FakeProvider(stream=stream), recorded), stream)
    assert json.loads(out[-1][6:])["error"]["code"] == "provider_stream_interrupted"
    [event] = recorded.events
    assert (event.completion_tokens, event.usage_source, event.error) == (2, "estimated",
                                                                         "together_ai stream interrupted: ReadError")


async def test_a_plain_answer_without_usage_is_counted_never_zero():
    answer = {"choices": [{"index": 0, "message": {"content": "four words right here"}}]}
    recorded = Recorded()
    await gateway(FakeProvider(answer=answer), recorded).complete(ctx(), {"messages": []})
    await asyncio.sleep(0)
    [event] = recorded.events
    assert (event.prompt_tokens, event.completion_tokens, event.usage_source) == (12, 4, "estimated")


class FailingProvider(FakeProvider):
    def __init__(self, name: str, *failures: ProviderError) -> None:
        super().__init__()
        self.name, self.failures = name, list(failures)

    async def complete(self, model: str, payload: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
        raise self.failures.pop(0)


ANSWER = {"choices": [{"index": 0, "message": {"content": "hi"}}], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}


def fallback_gateway(together: FakeProvider, openai: FakeProvider, recorded: Recorded) -> Gateway:
    openai.name = "openai"
    return Gateway(router_of(together, openai), recorded, Words())


def timed_out() -> ProviderError:
    return ProviderError("together_ai", "timed out", timeout=True, billable=True)


async def test_a_fallback_call_is_recorded_as_served_by_the_provider_and_model_that_answered():
    recorded = Recorded()
    g = fallback_gateway(FailingProvider("together_ai", ProviderError("together_ai", "down", status=503)),
                         FakeProvider(answer=ANSWER), recorded)
    await g.complete(ctx(routes=FALLBACK), {"messages": []})
    [event] = recorded.events
    assert (event.model, event.provider, event.served_model) == (MODEL, "openai", "gpt-4o-mini")
    assert event.billed_attempts == [] and event.prompt_tokens == 9  # a 503 is not billed


async def test_an_attempt_that_timed_out_before_the_answer_is_billed_at_its_own_model():
    recorded = Recorded()
    g = fallback_gateway(FailingProvider("together_ai", timed_out()), FakeProvider(answer=ANSWER), recorded)
    await g.complete(ctx(routes=FALLBACK), {"messages": []})
    [event] = recorded.events
    assert (event.provider, event.served_model, event.prompt_tokens) == ("openai", "gpt-4o-mini", 9)
    assert event.billed_attempts == [BilledAttempt(provider="together_ai", served_model=MODEL, prompt_tokens=12)]


async def test_a_call_no_provider_answered_is_recorded_under_the_last_attempt_billed():
    recorded = Recorded()
    openai = FailingProvider("openai", ProviderError("openai", "down", status=500))
    g = fallback_gateway(FailingProvider("together_ai", timed_out()), openai, recorded)
    with pytest.raises(ProvidersFailed):
        await g.complete(ctx(routes=FALLBACK), {"messages": []})
    [event] = recorded.events
    assert (event.provider, event.served_model, event.prompt_tokens, event.usage_source) == (
        "together_ai", MODEL, 12, "estimated")
    assert event.billed_attempts == [] and not event.success

    nothing_billed = Recorded()
    g = fallback_gateway(FailingProvider("together_ai", ProviderError("together_ai", "down", status=503)),
                         FailingProvider("openai", ProviderError("openai", "down", status=500)), nothing_billed)
    with pytest.raises(ProvidersFailed):
        await g.complete(ctx(routes=FALLBACK), {"messages": []})
    [event] = nothing_billed.events
    assert (event.provider, event.served_model, event.total_tokens) == ("openai", "gpt-4o-mini", 0)


def keeper() -> tuple[MemoryStore, AnswerKeeper]:
    store = MemoryStore()
    cache = ResponseCache(store, {MODEL: ModelCachePolicy(600, False, 100_000)})
    return store, AnswerKeeper(cache, CachePlan("cwapi:cache:k", True, True, None, 600, 100_000))


async def relay_kept(stream: FakeStream) -> tuple[list[bytes], Recorded, MemoryStore]:
    recorded, (store, keep) = Recorded(), keeper()
    g = gateway(FakeProvider(stream=stream), recorded)
    relay = await g.open_stream(ctx(), {"messages": []}, False, keep)
    out = [piece async for piece in relay]
    await relay.aclose()
    await g.drain()
    return out, recorded, store


USAGE_CHUNK = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}}


async def test_a_complete_stream_with_the_providers_usage_is_kept():
    _, recorded, store = await relay_kept(FakeStream([delta("one two"), delta(" three", "stop"), USAGE_CHUNK]))
    assert recorded.events[0].success and len(store.entries) == 1


async def test_a_stream_with_an_error_chunk_then_done_is_recorded_as_failed_and_not_kept():
    error = {"error": {"message": "CUDA out of memory", "type": "InternalServerError", "code": 500}}
    out, recorded, store = await relay_kept(FakeStream([delta("Par"), error, USAGE_CHUNK]))
    [event] = recorded.events
    assert (event.success, event.error) == (False, "together_ai sent an error in the stream: CUDA out of memory")
    assert event.completion_tokens == 3  # the provider's usage, as for any stream that ends
    assert json.loads(out[-1][6:]) == error and b"data: [DONE]\n\n" not in out
    assert store.entries == {}


async def test_a_stream_that_ends_in_done_before_its_finish_reason_is_incomplete_and_not_kept():
    out, recorded, store = await relay_kept(FakeStream([delta("one two"), USAGE_CHUNK]))
    assert json.loads(out[-1][6:])["error"]["code"] == "provider_stream_incomplete"
    assert recorded.events[0].success is False and store.entries == {}


async def test_a_stream_without_the_providers_usage_is_recorded_but_not_kept():
    _, recorded, store = await relay_kept(FakeStream([delta("one two"), delta(" three", "stop")]))
    assert recorded.events[0].success and recorded.events[0].usage_source == "estimated" and store.entries == {}
