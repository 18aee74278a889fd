"""How many tokens a call used: the provider's own usage when it sends one, else costwarden's count of
what was sent and relayed. Pure domain code: the tokenizer is injected.

Nothing here ever answers zero for a prompt that was sent: a missing usage object, a stream the client
abandoned and a stream the provider broke are all counted, and marked `estimated`."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from shared.events import BilledAttempt, UsageSource

# OpenAI's chat framing: each message costs its text plus about 3 tokens, and the reply is primed
# with 3 more (the count OpenAI documents for its cl100k models).
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3


class TokenCounter(Protocol):
    def count(self, text: str) -> int: ...


@dataclass(frozen=True)
class Usage:
    """`prompt_tokens` counts every prompt token, those read from (`cached_prompt_tokens`) and written to
    (`cache_write_prompt_tokens`) the provider's prompt cache included."""

    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0
    source: UsageSource = "provider"
    cache_write_prompt_tokens: int = 0


NO_USAGE = Usage(0, 0)


def provider_usage(body: Mapping[str, Any] | None) -> Usage | None:
    """The provider's OpenAI-style usage object, or None when it sent none. Tokens written to a prompt
    cache are read from `prompt_tokens_details.cache_creation_tokens` (how the gateway reports
    Anthropic's) or LiteLLM's `cache_creation_input_tokens`."""
    usage = (body or {}).get("usage")
    if not isinstance(usage, Mapping) or "prompt_tokens" not in usage:
        return None
    details = usage.get("prompt_tokens_details")
    if not isinstance(details, Mapping):
        details = {}
    written = details.get("cache_creation_tokens") or usage.get("cache_creation_input_tokens")
    return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0),
                 int(details.get("cached_tokens") or 0), cache_write_prompt_tokens=int(written or 0))


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text") or "" for part in content if isinstance(part, Mapping))
    return ""


def _generated_texts(message: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    """(kind, text) of what the model generated in an assistant message or a stream delta. Texts of one
    kind continue each other across deltas; texts of different kinds do not."""
    for kind in ("content", "reasoning_content", "reasoning", "refusal"):
        value = message.get(kind)
        if isinstance(value, str):
            yield kind, value
    function_call = message.get("function_call")
    if isinstance(function_call, Mapping):
        yield "function_call", str(function_call.get("name") or "") + str(function_call.get("arguments") or "")
    for position, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping):
            index = call.get("index", position)
            yield f"tool_call:{index}", str(function.get("name") or "") + str(function.get("arguments") or "")


def _count_by_kind(counter: TokenCounter, texts: Iterable[tuple[str, str]]) -> int:
    by_kind: dict[str, list[str]] = {}
    for kind, text in texts:
        by_kind.setdefault(kind, []).append(text)
    return sum(counter.count("".join(parts)) for parts in by_kind.values())


def prompt_tokens(counter: TokenCounter, payload: Mapping[str, Any]) -> int:
    """Tokens of a chat request's prompt: every message's text, name and tool calls with OpenAI's
    framing, plus the tool and function definitions (sent to the model as text)."""
    total = REPLY_PRIMING_TOKENS
    for message in payload.get("messages") or ():
        if not isinstance(message, Mapping):
            continue
        total += TOKENS_PER_MESSAGE + counter.count(str(message.get("role") or ""))
        total += counter.count(_content_text(message.get("content")))
        if message.get("name"):
            total += TOKENS_PER_NAME + counter.count(str(message["name"]))
        total += _count_by_kind(counter, _generated_texts({"tool_calls": message.get("tool_calls"),
                                                           "function_call": message.get("function_call")}))
    for name in ("tools", "functions"):
        if payload.get(name):
            total += counter.count(json.dumps(payload[name], separators=(",", ":")))
    return total


def embedding_tokens(counter: TokenCounter, payload: Mapping[str, Any]) -> int:
    """Tokens of an embeddings request's input: a string, strings, a token array or token arrays."""
    raw = payload.get("input")
    if isinstance(raw, str):
        return counter.count(raw)
    items = list(raw or ())
    if items and all(isinstance(item, int) for item in items):
        return len(items)
    return sum(counter.count(item) if isinstance(item, str) else len(list(item)) for item in items)


def prompt_chars(payload: Mapping[str, Any]) -> int:
    """A cheap size of the prompt, to decide whether counting it is worth a thread."""
    raw = payload.get("input")
    if raw is not None:
        return len(raw) if isinstance(raw, str) else sum(len(item) for item in raw if isinstance(item, str | list))
    return sum(len(_content_text(m.get("content"))) for m in payload.get("messages") or () if isinstance(m, Mapping))


def _capped(tokens: int, max_tokens: int | None, choices: int) -> int:
    """A provider never produces more than `max_tokens` a choice, so a count above that (another model's
    tokenizer splits differently) is capped there."""
    return tokens if max_tokens is None else min(tokens, max_tokens * max(1, choices))


def usage_of_answer(counter: TokenCounter, body: Mapping[str, Any] | None, prompt_estimate: int,
                    max_tokens: int | None) -> Usage:
    """The provider's usage of a plain answer, or, when it sent none, the count of prompt and answer."""
    reported = provider_usage(body)
    if reported is not None:
        return reported
    choices = [c for c in (body or {}).get("choices") or () if isinstance(c, Mapping)]
    completion = sum(_count_by_kind(counter, _generated_texts(choice.get("message") or {})) for choice in choices)
    return Usage(prompt_estimate, _capped(completion, max_tokens, len(choices)), source="estimated")


class StreamTally:
    """What one relayed stream has carried: the generated text of every delta seen, and the provider's
    usage if its final chunk arrived."""

    def __init__(self) -> None:
        self._texts: list[tuple[str, str]] = []
        self._choices: set[int] = set()
        self._finished: set[int] = set()
        self.reported: Usage | None = None
        self.chunks = 0

    def add(self, chunk: Mapping[str, Any]) -> None:
        self.chunks += 1
        for choice in chunk.get("choices") or ():
            if isinstance(choice, Mapping):
                index = int(choice.get("index") or 0)
                self._choices.add(index)
                self._texts.extend((f"{index}:{kind}", text)
                                   for kind, text in _generated_texts(choice.get("delta") or {}))
                if choice.get("finish_reason"):
                    self._finished.add(index)
        self.reported = provider_usage(chunk) or self.reported

    @property
    def finished(self) -> bool:
        """Every choice seen has its finish_reason: the answer is complete."""
        return bool(self._choices) and self._choices <= self._finished

    def usage(self, counter: TokenCounter, prompt_estimate: int, max_tokens: int | None) -> Usage:
        if self.reported is not None:
            return self.reported
        completion = _count_by_kind(counter, self._texts)
        return Usage(prompt_estimate, _capped(completion, max_tokens, len(self._choices)), source="estimated")


def billed_attempts(attempts: Iterable[tuple[str, str]], prompt_estimate: int) -> list[BilledAttempt]:
    """Attempts (provider, the provider's model) that did not answer but that their provider bills: each
    had the prompt (a timeout while the model worked, a connection cut mid-answer)."""
    return [BilledAttempt(provider=provider, served_model=model, prompt_tokens=prompt_estimate)
            for provider, model in attempts]


def billed_prompt(prompt_estimate: int) -> Usage:
    """Usage of an attempt that did not answer but that its provider bills: the prompt it was sent."""
    return Usage(prompt_estimate, 0, source="estimated")
