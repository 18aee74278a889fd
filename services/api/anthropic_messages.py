"""OpenAI's chat completions in Anthropic's Messages API and back: the request (system prompt, roles,
images, tools and tool results, max_tokens, stop, temperature), the answer, and the event stream turned
into OpenAI's chunks, with Anthropic's usage (input, output, cache read and cache creation tokens) as
OpenAI's usage object. Pure functions: the HTTP client (aiohttp_provider_client.py) applies them.

OpenAI's `prompt_tokens` counts every prompt token; Anthropic's `input_tokens` leaves out the tokens read
from and written to its cache, which are added back here, and reported as
`prompt_tokens_details.cached_tokens` and `prompt_tokens_details.cache_creation_tokens`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from typing import Any

FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                  "pause_turn": "stop", "refusal": "content_filter"}
# Request fields both APIs have under the same name and meaning.
SAME_FIELDS = ("temperature", "top_p")


class UnsupportedRequest(ValueError):
    """A chat request the Messages API cannot serve (its message says what)."""


class AnthropicStreamError(ValueError):
    """An `error` event inside a stream (Anthropic's overload mid-answer, for one)."""


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text") or "" for part in content or () if isinstance(part, Mapping))


def _image(part: Mapping[str, Any]) -> dict[str, Any]:
    url = str((part.get("image_url") or {}).get("url") or "")
    if url.startswith("data:") and ";base64," in url:
        media_type, data = url[5:].split(";base64,", 1)
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _blocks(content: Any) -> list[dict[str, Any]]:
    """An OpenAI message's content as Anthropic content blocks (a part's cache_control kept)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for part in content:
        if not isinstance(part, Mapping):
            continue
        if part.get("type") == "image_url":
            block = _image(part)
        else:
            block = {"type": "text", "text": str(part.get("text") or "")}
        if part.get("cache_control"):
            block["cache_control"] = part["cache_control"]
        blocks.append(block)
    return blocks


def _tool_use(call: Mapping[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except json.JSONDecodeError:
        raise UnsupportedRequest(f"tool call {call.get('id')!r} has arguments that are not JSON") from None
    return {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": arguments}


def _turn(message: Mapping[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    role = message.get("role")
    if role in ("tool", "function"):
        result = {"type": "tool_result", "tool_use_id": message.get("tool_call_id") or message.get("name"),
                  "content": _text(message.get("content"))}
        return "user", [result]
    blocks = _blocks(message.get("content"))
    if role == "assistant":
        blocks += [_tool_use(call) for call in message.get("tool_calls") or () if isinstance(call, Mapping)]
        return "assistant", blocks
    return "user", blocks


def _tools(tools: Any) -> list[dict[str, Any]]:
    out = []
    for tool in tools or ():
        function = tool.get("function") if isinstance(tool, Mapping) and tool.get("type") == "function" else None
        if function is None:
            raise UnsupportedRequest("only function tools can be sent to an anthropic provider")
        spec = {"name": function.get("name"),
                "input_schema": function.get("parameters") or {"type": "object", "properties": {}}}
        if function.get("description"):
            spec["description"] = function["description"]
        out.append(spec)
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice is None and parallel is None:
        return None
    if isinstance(choice, Mapping):
        picked: dict[str, Any] = {"type": "tool", "name": (choice.get("function") or {}).get("name")}
    else:
        picked = {"type": {"required": "any", "none": "none"}.get(str(choice), "auto")}
    if parallel is False and picked["type"] != "none":
        picked["disable_parallel_tool_use"] = True
    return picked


def _conversation(messages: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The system prompt's blocks and the turns: consecutive turns of one role are joined, as the API
    wants roles to alternate."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for message in messages or ():
        if message.get("role") in ("system", "developer"):
            system += _blocks(message.get("content"))
            continue
        role, blocks = _turn(message)
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += blocks
        else:
            turns.append({"role": role, "content": blocks})
    return system, turns


def _options(payload: Mapping[str, Any]) -> dict[str, Any]:
    """stop, temperature, top_p, tools and tool_choice, user and stream as the Messages API names them."""
    options: dict[str, Any] = {name: payload[name] for name in SAME_FIELDS if payload.get(name) is not None}
    stop = payload.get("stop")
    if stop:
        options["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if payload.get("tools"):
        options["tools"] = _tools(payload["tools"])
        choice = _tool_choice(payload.get("tool_choice"), payload.get("parallel_tool_calls"))
        if choice is not None:
            options["tool_choice"] = choice
    if payload.get("user"):
        options["metadata"] = {"user_id": payload["user"]}
    if payload.get("stream"):
        options["stream"] = True
    return options


def messages_request(payload: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The Messages API request for an OpenAI chat request (UnsupportedRequest for what it cannot carry):
    system and developer messages become the top-level `system`, the completion limit `max_tokens`
    (which the API requires; the gateway always sends one)."""
    if (payload.get("n") or 1) > 1:
        raise UnsupportedRequest("n > 1 is not supported by the Messages API")
    system, turns = _conversation(payload.get("messages"))
    request: dict[str, Any] = {
        "model": model, "messages": turns,
        "max_tokens": payload.get("max_completion_tokens") or payload.get("max_tokens"),
    }
    if system:
        request["system"] = system
    return {**request, **_options(payload)}


def openai_usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    """Anthropic's usage as OpenAI's: every prompt token in `prompt_tokens`, the cache's in the details."""
    read = int(usage.get("cache_read_input_tokens") or 0)
    written = int(usage.get("cache_creation_input_tokens") or 0)
    prompt = int(usage.get("input_tokens") or 0) + read + written
    completion = int(usage.get("output_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": read, "cache_creation_tokens": written}}


def chat_completion(message: Mapping[str, Any]) -> dict[str, Any]:
    """A Messages API answer as OpenAI's chat completion."""
    text = "".join(block.get("text") or "" for block in message.get("content") or () if block.get("type") == "text")
    tool_calls = [{"id": block.get("id"), "type": "function",
                   "function": {"name": block.get("name"), "arguments": json.dumps(block.get("input") or {})}}
                  for block in message.get("content") or () if block.get("type") == "tool_use"]
    answer: dict[str, Any] = {"role": "assistant", "content": text or (None if tool_calls else "")}
    if tool_calls:
        answer["tool_calls"] = tool_calls
    return {
        "id": message.get("id"), "object": "chat.completion", "created": int(time.time()),
        "model": message.get("model"),
        "choices": [{"index": 0, "message": answer,
                     "finish_reason": FINISH_REASONS.get(str(message.get("stop_reason")), "stop")}],
        "usage": openai_usage(message.get("usage") or {}),
    }


class StreamTranslator:
    """Anthropic's named Server-Sent Events, line by line, into OpenAI's `data:` lines: message_start
    opens the assistant's turn and carries the prompt's usage, content_block_* carry text, thinking and
    tool calls, message_delta the stop reason and the completion's usage, message_stop ends the answer
    with the usage chunk and `[DONE]`. `ping` and `event:` lines carry nothing of their own."""

    def __init__(self) -> None:
        self.id = ""
        self.model = ""
        self.created = int(time.time())
        self.usage: dict[str, Any] = {}
        self.tool_index: dict[int, int] = {}  # Anthropic's content block index -> OpenAI's tool call index

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> str:
        data = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
        return "data: " + json.dumps(data, separators=(",", ":"))

    def _usage_chunk(self) -> str:
        data = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [], "usage": openai_usage(self.usage)}
        return "data: " + json.dumps(data, separators=(",", ":"))

    def lines(self, line: str) -> Iterator[str]:
        if not line.startswith("data:"):
            return
        event = json.loads(line[5:])
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self.id, self.model = str(message.get("id") or ""), str(message.get("model") or "")
            self.usage.update(message.get("usage") or {})
            yield self._chunk({"role": "assistant", "content": ""})
        elif kind == "content_block_start":
            yield from self._block_start(int(event.get("index") or 0), event.get("content_block") or {})
        elif kind == "content_block_delta":
            yield from self._block_delta(int(event.get("index") or 0), event.get("delta") or {})
        elif kind == "message_delta":
            self.usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
            reason = (event.get("delta") or {}).get("stop_reason")
            yield self._chunk({}, FINISH_REASONS.get(str(reason), "stop"))
        elif kind == "message_stop":
            yield self._usage_chunk()
            yield "data: [DONE]"
        elif kind == "error":
            error = event.get("error") or {}
            raise AnthropicStreamError(f"{error.get('type')}: {error.get('message')}")

    def _block_start(self, index: int, block: Mapping[str, Any]) -> Iterator[str]:
        if block.get("type") == "tool_use":
            position = self.tool_index[index] = len(self.tool_index)
            yield self._chunk({"tool_calls": [{"index": position, "id": block.get("id"), "type": "function",
                                               "function": {"name": block.get("name"), "arguments": ""}}]})
        elif block.get("type") == "text" and block.get("text"):
            yield self._chunk({"content": block["text"]})

    def _block_delta(self, index: int, delta: Mapping[str, Any]) -> Iterator[str]:
        kind = delta.get("type")
        if kind == "text_delta":
            yield self._chunk({"content": delta.get("text") or ""})
        elif kind == "input_json_delta" and index in self.tool_index:
            yield self._chunk({"tool_calls": [{"index": self.tool_index[index],
                                               "function": {"arguments": delta.get("partial_json") or ""}}]})
        elif kind == "thinking_delta":
            yield self._chunk({"reasoning_content": delta.get("thinking") or ""})
