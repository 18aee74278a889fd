"""The provider client in each wire format, on the simulator in that mode over real HTTP: an OpenAI chat
call sent to Anthropic's Messages API and its answer, stream, tool calls, cache usage and errors back in
OpenAI's shape; Azure's deployment URL, api-version and api-key."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from services.api.providers import ProviderError, ProviderStreamBroken
from services.api.usage import StreamTally, provider_usage
from tests.servers import ThreadedHttpServer
from tests.unit.api.test_aiohttp_provider_client import client_of

CLAUDE = "claude-3-5-haiku-20241022"


def last_request(server: ThreadedHttpServer) -> dict:
    return httpx.get(f"{server.url}/_sim/requests").json()[-1]


def faults(server: ThreadedHttpServer, **set_to) -> None:
    httpx.post(f"{server.url}/_sim/faults", json=set_to).raise_for_status()


async def streamed_chunks(client, model: str, payload: dict) -> list[dict]:
    stream = await client.open_stream(model, {**payload, "stream": True})
    try:
        lines = [line async for line in stream.lines()]
    finally:
        await stream.aclose()
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[5:]) for line in lines[:-1]]


async def test_a_chat_call_goes_to_the_messages_api_and_comes_back_as_a_chat_completion(anthropic_sim):
    client = client_of(anthropic_sim, kind="anthropic", base_path="", name="anthropic")
    payload = {"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hello"}],
               "max_tokens": 20, "stop": "simulated", "temperature": 0.3, "user": "u-1"}
    try:
        answer, raw = await client.complete(CLAUDE, payload)
    finally:
        await client.aclose()
    sent = last_request(anthropic_sim)
    assert sent == {"model": CLAUDE, "max_tokens": 20, "system": [{"type": "text", "text": "Be terse."}],
                    "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
                    "stop_sequences": ["simulated"], "temperature": 0.3, "metadata": {"user_id": "u-1"}}
    assert json.loads(raw) == answer and answer["object"] == "chat.completion" and answer["model"] == CLAUDE
    [choice] = answer["choices"]
    assert choice["message"] == {"role": "assistant", "content": "This is a "} and choice["finish_reason"] == "stop"
    usage = provider_usage(answer)
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens == 4


async def test_a_stream_from_anthropic_arrives_as_openai_chunks_with_its_usage(anthropic_sim):
    client = client_of(anthropic_sim, kind="anthropic", base_path="", name="anthropic")
    try:
        chunks = await streamed_chunks(client, CLAUDE, {"messages": [{"role": "user", "content": "Hi"}],
                                                        "max_tokens": 6})
    finally:
        await client.aclose()
    tally = StreamTally()
    for chunk in chunks:
        tally.add(chunk)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "This is a simulated answer from" and tally.finished
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert tally.reported is not None and tally.reported.completion_tokens == 6
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6


async def test_tools_go_out_as_anthropic_tools_and_come_back_as_tool_calls(anthropic_sim):
    client = client_of(anthropic_sim, kind="anthropic", base_path="", name="anthropic")
    tools = [{"type": "function", "function": {"name": "weather", "description": "The weather",
                                               "parameters": {"type": "object", "properties": {}}}}]
    payload = {"messages": [{"role": "user", "content": "Oslo?"}], "max_tokens": 30, "tools": tools,
               "tool_choice": {"type": "function", "function": {"name": "weather"}}}
    try:
        answer, _ = await client.complete(CLAUDE, payload)
        chunks = await streamed_chunks(client, CLAUDE, payload)
    finally:
        await client.aclose()
    sent = last_request(anthropic_sim)
    assert sent["tools"] == [{"name": "weather", "description": "The weather",
                              "input_schema": {"type": "object", "properties": {}}}]
    assert sent["tool_choice"] == {"type": "tool", "name": "weather"}
    [choice] = answer["choices"]
    [call] = choice["message"]["tool_calls"]
    assert (choice["finish_reason"], call["function"]["name"], json.loads(call["function"]["arguments"])) == (
        "tool_calls", "weather", {"simulated": True})
    arguments = "".join(tc["function"].get("arguments") or "" for c in chunks if c["choices"]
                        for tc in c["choices"][0]["delta"].get("tool_calls") or ())
    assert json.loads(arguments) == {"simulated": True}
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"


async def test_anthropic_cache_reads_and_writes_are_reported_apart(anthropic_sim):
    client = client_of(anthropic_sim, kind="anthropic", base_path="", name="anthropic")
    system = {"role": "system", "content": [{"type": "text", "text": "A long rule book. " * 50,
                                             "cache_control": {"type": "ephemeral"}}]}
    try:
        usages = [provider_usage((await client.complete(CLAUDE, {"messages": [system, {"role": "user", "content": q}],
                                                                "max_tokens": 3}))[0])
                  for q in ("one", "two")]
    finally:
        await client.aclose()
    first, second = usages
    assert first is not None and second is not None
    assert first.cache_write_prompt_tokens > 100 and first.cached_prompt_tokens == 0
    assert second.cached_prompt_tokens == first.cache_write_prompt_tokens and second.cache_write_prompt_tokens == 0
    assert first.prompt_tokens == second.prompt_tokens  # every prompt token, cached or not


async def test_anthropic_errors_keep_their_message_status_and_retry_after(anthropic_sim):
    client = client_of(anthropic_sim, kind="anthropic", base_path="", name="anthropic")
    faults(anthropic_sim, status=529, count=1, retry_after=7)
    try:
        with pytest.raises(ProviderError) as overloaded:
            await client.complete(CLAUDE, {"messages": [{"role": "user", "content": "x"}], "max_tokens": 3})
        with pytest.raises(ProviderError) as two_choices:
            await client.complete(CLAUDE, {"messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "n": 2})
        faults(anthropic_sim, break_after=2)
        with pytest.raises(ProviderStreamBroken):
            await streamed_chunks(client, CLAUDE, {"messages": [{"role": "user", "content": "x"}], "max_tokens": 9})
    finally:
        faults(anthropic_sim)
        await client.aclose()
    failure = overloaded.value
    assert (failure.status, str(failure), failure.retryable, failure.retry_after_s) == (
        529, "simulated failure from anthropic", True, 7.0)
    assert (two_choices.value.status, two_choices.value.retryable) == (400, False)


async def test_an_error_event_inside_an_anthropic_stream_breaks_it_off():
    async def messages(request: Request) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b'event: message_start\ndata: {"type": "message_start", "message": {"id": "m", "model": "c", ' \
                  b'"usage": {"input_tokens": 5, "output_tokens": 1}}}\n\n'
            yield b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", ' \
                  b'"message": "Overloaded"}}\n\n'
        return StreamingResponse(body(), media_type="text/event-stream")

    server = ThreadedHttpServer(Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])])).start()
    client = client_of(server, kind="anthropic", base_path="", name="anthropic")
    try:
        with pytest.raises(ProviderStreamBroken, match="overloaded_error: Overloaded"):
            await streamed_chunks(client, CLAUDE, {"messages": [{"role": "user", "content": "x"}], "max_tokens": 9})
    finally:
        await client.aclose()
        server.stop()


async def test_azure_calls_reach_the_deployment_with_api_version_and_api_key(azure_sim):
    client = client_of(azure_sim, kind="azure", base_path="", name="azure-east", api_version="2024-10-21")
    try:
        answer, _ = await client.complete("gpt4o-prod", {"messages": [{"role": "user", "content": "hi"}],
                                                         "max_tokens": 3})
        vectors, _ = await client.embed("embed-prod", {"input": ["a", "b"]})
    finally:
        await client.aclose()
    calls = httpx.get(f"{azure_sim.url}/_sim/calls").json()[-2:]
    assert calls == [{"path": "/openai/deployments/gpt4o-prod/chat/completions", "api_version": "2024-10-21",
                      "key": "k"},
                     {"path": "/openai/deployments/embed-prod/embeddings", "api_version": "2024-10-21", "key": "k"}]
    assert answer["model"] == "gpt4o-prod" and answer["usage"]["completion_tokens"] == 3
    assert len(vectors["data"]) == 2 and "model" not in last_request(azure_sim)
