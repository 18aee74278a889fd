"""The client counts a prompt and an answer as costwarden's gateway does (with the same cl100k
vocabulary), reads usage from the openai SDK's objects and from dicts alike, and without tiktoken
estimates, never counting text as nothing."""

from __future__ import annotations

import pytest
from costwarden_client.tokens import (
    StreamTally,
    Usage,
    chat_prompt_tokens,
    default_counter,
    embedding_input_tokens,
    estimate_tokens,
    usage_of_answer,
)
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.create_embedding_response import CreateEmbeddingResponse

from services.api import usage as gateway
from services.api.tiktoken_token_counter import TiktokenTokenCounter

GATEWAY = TiktokenTokenCounter.cl100k()
TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}]
PAYLOADS = [
    {"messages": [{"role": "user", "content": "Say hello"}]},
    {"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "name": "ana",
                                                                      "content": [{"type": "text", "text": "Hi "},
                                                                                  {"type": "text", "text": "there"}]}]},
    {"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"}], "tools": TOOLS},
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_chat_prompt_counts_as_the_gateway_counts_it(payload):
    assert chat_prompt_tokens(default_counter(), payload["messages"], payload.get("tools")) == \
        gateway.prompt_tokens(GATEWAY, payload)


def test_without_tiktoken_text_is_estimated_never_zero():
    assert [estimate_tokens(text) for text in ("", "a", "abcd", "abcde")] == [0, 1, 1, 2]
    assert chat_prompt_tokens(estimate_tokens, [{"role": "user", "content": "x" * 40}]) == 3 + 3 + 1 + 10


@pytest.mark.parametrize("raw", ["hello world", ["hello world", "hi"], [1, 2, 3], [[1, 2], [3]]])
def test_an_embeddings_input_counts_as_the_gateway_counts_it(raw):
    assert embedding_input_tokens(default_counter(), raw) == gateway.embedding_tokens(GATEWAY, {"input": raw})


def test_embedding_inputs_count_text_and_token_arrays():
    count = default_counter()
    assert embedding_input_tokens(count, "hello world") == 2
    assert embedding_input_tokens(count, ["hello world", "hi"]) == 3
    assert embedding_input_tokens(count, [1, 2, 3]) == 3 and embedding_input_tokens(count, [[1, 2], [3]]) == 3


def chunk(content: str | None = None, index: int = 0, usage: dict | None = None, finish: str | None = None) -> dict:
    choices = [] if usage else [{"index": index, "delta": {"content": content}, "finish_reason": finish}]
    return {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": choices,
            "usage": usage}


def test_a_stream_is_counted_per_choice_or_taken_from_its_usage_chunk():
    texts = ["Hello", " wor", "ld", "!"]
    for parse in (dict, ChatCompletionChunk.model_validate):
        tally = StreamTally()
        assert not any(tally.add(parse(chunk(text, index))) for text in texts for index in (0, 1))
        counted = tally.usage(default_counter(), prompt_estimate=11, max_tokens=None)
        assert counted == Usage(11, 2 * gateway_count("Hello world!"), source="estimated")
        assert tally.usage(default_counter(), 11, max_tokens=2) == Usage(11, 4, source="estimated")  # 2 a choice
        assert tally.add(parse(chunk(usage={"prompt_tokens": 9, "completion_tokens": 8, "total_tokens": 17})))
        assert tally.usage(default_counter(), 11, None) == Usage(9, 8)


def gateway_count(text: str) -> int:
    return GATEWAY.count(text)


def test_an_answer_gives_its_usage_or_is_counted():
    answer = {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hello world!"}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8,
                  "prompt_tokens_details": {"cached_tokens": 2}}}
    parsed = ChatCompletion.model_validate(answer)
    assert usage_of_answer(default_counter(), parsed, 99, None) == Usage(5, 3, 2) == Usage.of(answer["usage"])
    bare = ChatCompletion.model_validate({**answer, "usage": None})
    assert usage_of_answer(default_counter(), bare, 99, None) == Usage(99, 3, source="estimated")
    embedded = CreateEmbeddingResponse.model_validate({"object": "list", "model": "e", "data": [],
                                                       "usage": {"prompt_tokens": 4, "total_tokens": 4}})
    assert Usage.of(embedded.usage) == Usage(4, 0)
    with pytest.raises(ValueError, match="not a usage"):
        Usage.of({"total_tokens": 3})
