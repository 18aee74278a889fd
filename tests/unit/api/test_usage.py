"""How the gateway takes a call's usage: the provider's when it sends one, else its own count."""

from __future__ import annotations

import pytest

from services.api.tiktoken_token_counter import TiktokenTokenCounter
from services.api.usage import (
    StreamTally,
    Usage,
    billed_attempts,
    billed_prompt,
    prompt_tokens,
    provider_usage,
    usage_of_answer,
)
from shared.events import BilledAttempt


class WordCounter:
    """A tokenizer where every whitespace-separated word is one token: easy to count by eye."""

    def count(self, text: str) -> int:
        return len(text.split())


WORDS = WordCounter()


def delta_chunk(content: str | None = None, finish: str | None = None, index: int = 0, **delta) -> dict:
    if content is not None:
        delta["content"] = content
    return {"choices": [{"index": index, "delta": delta, "finish_reason": finish}]}


def test_the_providers_usage_is_taken_as_it_is():
    body = {"usage": {"prompt_tokens": 12, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 4}}}
    assert provider_usage(body) == Usage(12, 7, 4, "provider")
    assert usage_of_answer(WORDS, body, prompt_estimate=99, max_tokens=None) == Usage(12, 7, 4, "provider")


@pytest.mark.parametrize("body", [{}, {"usage": None}, {"usage": {}}, None])
def test_no_usage_from_the_provider_is_none_not_zero(body):
    assert provider_usage(body) is None


def test_an_answer_without_usage_is_counted_from_its_prompt_and_text():
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "one two three",
                                                 "tool_calls": [{"function": {"name": "f", "arguments": "a b"}}]}}]}
    usage = usage_of_answer(WORDS, body, prompt_estimate=40, max_tokens=None)
    assert usage == Usage(40, 3 + 2, 0, "estimated")  # a tool call is its name and arguments: "fa b"


def test_a_count_above_max_tokens_is_capped_per_choice():
    body = {"choices": [{"index": i, "message": {"content": "w " * 50}} for i in range(2)]}
    assert usage_of_answer(WORDS, body, prompt_estimate=5, max_tokens=30).completion_tokens == 60


def test_prompt_counts_every_message_with_openai_framing_and_tools():
    payload = {"messages": [{"role": "system", "content": "be brief"},
                            {"role": "user", "name": "ann", "content": [{"type": "text", "text": "hello there"},
                                                                         {"type": "image_url", "image_url": {}}]}],
               "tools": [{"type": "function"}]}
    framing = 3 + 2 * 3 + 1  # reply priming, per message, the name
    roles, texts, name, tools = 2, 2 + 2, 1, 1
    assert prompt_tokens(WORDS, payload) == framing + roles + texts + name + tools


def test_a_stream_with_the_providers_final_usage_chunk_takes_it():
    tally = StreamTally()
    for chunk in (delta_chunk("", role="assistant"), delta_chunk("Hello"), delta_chunk(" world"),
                  delta_chunk(finish="stop"), {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}):
        tally.add(chunk)
    assert tally.finished
    assert tally.usage(WORDS, prompt_estimate=50, max_tokens=None) == Usage(9, 2, 0, "provider")


def test_a_stream_cut_short_counts_what_was_relayed():
    tally = StreamTally()
    for chunk in (delta_chunk("", role="assistant"), delta_chunk("one"), delta_chunk(" two"),
                  delta_chunk(None, reasoning_content="thinking hard")):
        tally.add(chunk)
    assert not tally.finished and tally.chunks == 4
    assert tally.usage(WORDS, prompt_estimate=17, max_tokens=100) == Usage(17, 4, 0, "estimated")


def test_an_unfinished_choice_keeps_a_stream_unfinished():
    tally = StreamTally()
    tally.add(delta_chunk("a", index=0))
    tally.add(delta_chunk("b", index=1))
    tally.add(delta_chunk(finish="stop", index=0))
    assert not tally.finished
    tally.add(delta_chunk(finish="length", index=1))
    assert tally.finished


def test_a_stream_that_relayed_nothing_still_bills_its_prompt():
    assert StreamTally().usage(WORDS, prompt_estimate=23, max_tokens=None) == Usage(23, 0, 0, "estimated")
    assert not StreamTally().finished


def test_an_attempt_the_provider_worked_on_bills_its_prompt_at_its_own_model():
    assert billed_prompt(30) == Usage(30, 0, 0, "estimated")
    assert billed_attempts([("together_ai", "llama"), ("openai", "gpt-4o")], 30) == [
        BilledAttempt(provider="together_ai", served_model="llama", prompt_tokens=30),
        BilledAttempt(provider="openai", served_model="gpt-4o", prompt_tokens=30)]


def test_cl100k_counts_as_openai_does():
    counter = TiktokenTokenCounter.cl100k()
    assert counter.count("") == 0
    assert counter.count("This is a simulated answer") == 5
    assert counter.count("tiktoken is great!") == 6  # OpenAI's cookbook example for cl100k_base
