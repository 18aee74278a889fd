"""The simulator's Anthropic mode: one answer of the Messages API (POST /v1/messages), plain or as its
named Server-Sent Events, in the shapes of Anthropic's documentation: text, or a tool_use block when
tool_choice forces a tool; `stop_sequences` honoured; usage with `input_tokens` and `output_tokens`, and
prompt caching: the prompt up to its last `cache_control` block is written to the cache the first time
(`cache_creation_input_tokens`) and read from it after (`cache_read_input_tokens`)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse, Response, StreamingResponse

from services.simulator.faults import BrokenStream

if TYPE_CHECKING:
    from services.simulator.simulator import Simulator

TOOL_INPUT = {"simulated": True}


def _texts(content: Any) -> Iterable[tuple[str, bool]]:
    """(text, carries cache_control) of each block of a system prompt or a message's content."""
    if isinstance(content, str):
        yield content, False
        return
    for block in content or ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            text = str(block.get("text") or "")
        elif kind == "tool_result":
            inner = block.get("content")
            text = inner if isinstance(inner, str) else "".join(str(b.get("text") or "") for b in inner or ())
        elif kind == "tool_use":
            text = json.dumps(block.get("input") or {})
        else:
            text = ""
        yield text, bool(block.get("cache_control"))


class AnthropicAnswer:
    def __init__(self, simulator: Simulator, body: dict[str, Any]) -> None:
        self.simulator = simulator
        self.faults = simulator.faults
        self.body = body
        self.id = f"msg_{uuid.uuid4().hex[:24]}"
        self.model = str(body.get("model") or "unknown")
        self.usage = self._prompt_usage()
        self.tool = self._forced_tool()
        self.text, self.stop_reason, self.stop_sequence = self._reply()
        generated = json.dumps(TOOL_INPUT) if self.tool else self.text
        self.usage["output_tokens"] = len(simulator.encoding.encode_ordinary(generated))

    def _prompt_usage(self) -> dict[str, int]:
        """Every prompt token, split as Anthropic splits them: cache creation or read for the prompt up
        to the last block marked cache_control, `input_tokens` for the rest."""
        encoding = self.simulator.encoding
        pieces: list[tuple[str, bool]] = [(json.dumps(self.body.get("tools") or []), False)]
        pieces += list(_texts(self.body.get("system")))
        for message in self.body.get("messages") or ():
            pieces += list(_texts(message.get("content")))
        counts = [len(encoding.encode_ordinary(text)) for text, _ in pieces]
        total = sum(counts) + 3 * len(self.body.get("messages") or ())
        marked = [i for i, (_, cached) in enumerate(pieces) if cached]
        usage = {"input_tokens": total, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        if marked:
            end = marked[-1] + 1
            prefix = hashlib.sha256(json.dumps([text for text, _ in pieces[:end]]).encode()).hexdigest()
            prefix_tokens = sum(counts[:end])
            seen = prefix in self.simulator.prompt_cache
            usage["cache_read_input_tokens" if seen else "cache_creation_input_tokens"] = prefix_tokens
            usage["input_tokens"] = total - prefix_tokens
            self.simulator.prompt_cache.add(prefix)
        return usage

    def _forced_tool(self) -> str | None:
        choice = self.body.get("tool_choice") or {}
        tools = self.body.get("tools") or []
        if choice.get("type") == "tool":
            return str(choice.get("name"))
        if choice.get("type") == "any" and tools:
            return str(tools[0].get("name"))
        return None

    def _reply(self) -> tuple[str, str, str | None]:
        if self.tool:
            return "", "tool_use", None
        tokens = self.simulator.tokens
        max_tokens = int(self.body.get("max_tokens") or len(tokens))
        text = "".join(tokens[i % len(tokens)] for i in range(max(1, max_tokens)))
        for stop in self.body.get("stop_sequences") or ():
            if stop and stop in text:
                return text[:text.index(stop)], "stop_sequence", stop
        return text, "end_turn", None

    def content(self) -> list[dict[str, Any]]:
        if self.tool:
            return [{"type": "tool_use", "id": f"toolu_{self.id[4:]}", "name": self.tool, "input": TOOL_INPUT}]
        return [{"type": "text", "text": self.text}]

    def plain(self) -> Response:
        return JSONResponse({"id": self.id, "type": "message", "role": "assistant", "model": self.model,
                             "content": self.content(), "stop_reason": self.stop_reason,
                             "stop_sequence": self.stop_sequence, "usage": self.usage})

    def streamed(self) -> Response:
        return StreamingResponse(self.events(), media_type="text/event-stream")

    @staticmethod
    def event(kind: str, data: dict[str, Any]) -> bytes:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()

    def _pieces(self) -> list[tuple[str, dict[str, Any]]]:
        """(event, data) of the content: one delta per token of text, or a tool call in two halves."""
        if self.tool:
            block = self.content()[0]
            arguments = json.dumps(block["input"])
            half = len(arguments) // 2
            return [("content_block_start", {"index": 0, "content_block": {**block, "input": {}}}),
                    *(("content_block_delta", {"index": 0, "delta": {"type": "input_json_delta", "partial_json": part}})
                      for part in (arguments[:half], arguments[half:]))]
        tokens = [self.simulator.encoding.decode([t]) for t in self.simulator.encoding.encode_ordinary(self.text)]
        return [("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
                *(("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": token}})
                  for token in tokens)]

    async def events(self) -> AsyncIterator[bytes]:
        stats, faults = self.simulator.stats, self.faults
        finished = False
        try:
            start_usage = {**self.usage, "output_tokens": 1}
            yield self.event("message_start", {"message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": start_usage}})
            yield self.event("ping", {})
            deltas = 0
            for kind, data in self._pieces():
                if kind == "content_block_delta":
                    if faults.break_after is not None and deltas >= int(faults.break_after):
                        raise BrokenStream(f"{self.simulator.name} cut the stream after {deltas} deltas")
                    if faults.chunk_delay_s:
                        await asyncio.sleep(faults.chunk_delay_s)
                    deltas += 1
                yield self.event(kind, data)
            yield self.event("content_block_stop", {"index": 0})
            yield self.event("message_delta", {"delta": {"stop_reason": self.stop_reason,
                                                         "stop_sequence": self.stop_sequence},
                                               "usage": {"output_tokens": self.usage["output_tokens"]}})
            yield self.event("message_stop", {})
            finished = True
        finally:
            if finished:
                stats["streams_finished"] += 1
            elif faults.break_after is None:
                stats["streams_closed_early"] += 1
                stats["last_closed_early_at"] = time.time()
