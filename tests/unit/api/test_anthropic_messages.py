"""OpenAI's chat request in the Messages API's terms and its answers back: a conversation with tool calls
and their results, images, tool choices, stop reasons, and the usage of a cached prompt."""

from __future__ import annotations

import json

import pytest

from services.api.anthropic_messages import (
    AnthropicStreamError,
    StreamTranslator,
    UnsupportedRequest,
    chat_completion,
    messages_request,
    openai_usage,
)

CALL = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}


def test_a_tool_conversation_keeps_its_turns_and_results():
    payload = {"max_completion_tokens": 64, "messages": [
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "user", "content": "Thanks"},
    ]}
    request = messages_request(payload, "claude")
    assert request["system"] == [{"type": "text", "text": "Use tools."}] and request["max_tokens"] == 64
    assert request["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                                     {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                  "data": "AAAA"}}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1", "name": "weather",
                                           "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                                     {"type": "text", "text": "Thanks"}]},  # consecutive user turns joined
    ]


@pytest.mark.parametrize(("choice", "parallel", "expected"), [
    ("auto", None, {"type": "auto"}),
    ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
    ("none", None, {"type": "none"}),
    ({"type": "function", "function": {"name": "weather"}}, None, {"type": "tool", "name": "weather"}),
])
def test_tool_choices_map_to_anthropics(choice, parallel, expected):
    tools = [{"type": "function", "function": {"name": "weather"}}]
    request = messages_request({"messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "tools": tools,
                                "tool_choice": choice, "parallel_tool_calls": parallel}, "claude")
    assert request["tool_choice"] == expected
    assert request["tools"] == [{"name": "weather", "input_schema": {"type": "object", "properties": {}}}]


def test_what_the_messages_api_cannot_carry_is_refused():
    with pytest.raises(UnsupportedRequest, match="n > 1"):
        messages_request({"messages": [], "max_tokens": 5, "n": 3}, "claude")
    with pytest.raises(UnsupportedRequest, match="function tools"):
        messages_request({"messages": [], "max_tokens": 5, "tools": [{"type": "web_search"}]}, "claude")


def test_a_cached_prompt_counts_every_token_as_a_prompt_token():
    assert openai_usage({"input_tokens": 10, "cache_read_input_tokens": 300, "cache_creation_input_tokens": 50,
                         "output_tokens": 7}) == {
        "prompt_tokens": 360, "completion_tokens": 7, "total_tokens": 367,
        "prompt_tokens_details": {"cached_tokens": 300, "cache_creation_tokens": 50}}


@pytest.mark.parametrize(("stop_reason", "finish_reason"), [
    ("end_turn", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"), ("refusal", "content_filter")])
def test_stop_reasons_become_finish_reasons(stop_reason, finish_reason):
    answer = chat_completion({"id": "msg_1", "model": "claude", "stop_reason": stop_reason,
                              "content": [{"type": "text", "text": "Hi"}], "usage": {"input_tokens": 3}})
    assert answer["choices"][0]["finish_reason"] == finish_reason and answer["choices"][0]["message"]["content"] == "Hi"


def events(*data: dict) -> list[str]:
    return [line for event in data for line in (f"event: {event['type']}", f"data: {json.dumps(event)}", "")]


def test_a_stream_carries_text_thinking_and_both_halves_of_the_usage():
    translator = StreamTranslator()
    lines = [out for line in events(
        {"type": "message_start", "message": {"id": "m1", "model": "claude",
                                              "usage": {"input_tokens": 20, "cache_read_input_tokens": 5}}},
        {"type": "ping"},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hello"}},
        {"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 9}},
        {"type": "message_stop"},
    ) for out in translator.lines(line)]
    chunks = [json.loads(line[5:]) for line in lines[:-1]]
    assert lines[-1] == "data: [DONE]"
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas == [{"role": "assistant", "content": ""}, {"reasoning_content": "hmm"}, {"content": "Hello"}, {}]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["prompt_tokens"] == 25 and chunks[-1]["usage"]["completion_tokens"] == 9
    assert {c["id"] for c in chunks} == {"m1"}


def test_an_error_event_in_a_stream_is_raised():
    translator = StreamTranslator()
    with pytest.raises(AnthropicStreamError, match="overloaded_error: Overloaded"):
        list(translator.lines('data: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'))
