"""An `openai` client whose `chat.completions.create` and `embeddings.create` ask costwarden before the
call and record it after, plain or streamed, with no other change to the caller's code
(`Guard.wrap`, `SyncGuard.wrap`). Everything else is the wrapped client's own, unguarded.

- Usage is the provider's own when it sends one. A stream is asked for its usage chunk
  (`stream_options.include_usage`); when the caller did not ask for it, that chunk is not shown to the
  caller. An answer without usage is counted (costwarden_client.tokens) and recorded as estimated.
- A stream is recorded when it ends, breaks, or is closed or dropped by the caller: with the provider's
  usage if it came, else what was streamed so far, counted.
- A call that fails with the provider's error answer (an HTTP status) is recorded with no tokens: the
  provider bills nothing for it. A call that fails otherwise (a timeout, a broken connection) may have
  reached the provider: its prompt is billed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Generator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from costwarden_client.contract import Policy
from costwarden_client.guard import Call, Guard, describe
from costwarden_client.tokens import (
    StreamTally,
    TokenCounter,
    Usage,
    attr,
    chat_prompt_tokens,
    embedding_input_tokens,
    usage_of_answer,
)

if TYPE_CHECKING:
    from costwarden_client.sync import SyncCall, SyncGuard

CHAT_ENDPOINT = "/v1/chat/completions"
EMBEDDINGS_ENDPOINT = "/v1/embeddings"
STREAM_CLOSED_EARLY = "the stream was closed before its end"


@dataclass(frozen=True)
class Caller:
    """Who the wrapped client's calls are made for."""

    tier: str
    user_id: str | None = None
    provider: str = "openai"
    client_ip: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    session_id: str | None = None
    policy: Policy = "standard"

    def call_arguments(self, plan: Plan) -> dict[str, Any]:
        return {"tier": self.tier, "user_id": self.user_id, "provider": self.provider, "client_ip": self.client_ip,
                "tags": self.tags, "session_id": self.session_id, "policy": self.policy, "model": plan.model,
                "max_tokens": plan.max_tokens, "prompt_tokens": plan.prompt_tokens, "choices": plan.choices,
                "endpoint": plan.endpoint}


def _int(value: Any) -> int | None:
    """An int argument, or None for an absent one (the SDK's NOT_GIVEN and omit sentinels included)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Plan:
    """One SDK call seen by the guard: what it asks of the limiter, and the arguments it is sent with."""

    endpoint: str
    model: str
    prompt_tokens: int
    arguments: dict[str, Any]
    max_tokens: int | None = None
    choices: int = 1
    stream: bool = False
    caller_wants_usage: bool = True

    @classmethod
    def chat(cls, arguments: Mapping[str, Any], count: TokenCounter) -> Plan:
        stream = attr(arguments, "stream") is True
        options = arguments.get("stream_options")
        wants_usage = attr(options, "include_usage") is True
        sent = dict(arguments)
        if stream and not wants_usage:
            sent["stream_options"] = {**(options if isinstance(options, Mapping) else {}), "include_usage": True}
        tools, functions = arguments.get("tools"), arguments.get("functions")
        return cls(CHAT_ENDPOINT, str(arguments["model"]),
                   chat_prompt_tokens(count, arguments.get("messages") or (),
                                      tools if isinstance(tools, list) else None,
                                      functions if isinstance(functions, list) else None),
                   sent, _int(arguments.get("max_completion_tokens")) or _int(arguments.get("max_tokens")),
                   _int(arguments.get("n")) or 1, stream, wants_usage)

    @classmethod
    def embeddings(cls, arguments: Mapping[str, Any], count: TokenCounter) -> Plan:
        # An embedding generates nothing: 1 is the least completion the contract takes.
        return cls(EMBEDDINGS_ENDPOINT, str(arguments["model"]),
                   embedding_input_tokens(count, arguments.get("input")), dict(arguments), max_tokens=1)


def failure_usage(exc: BaseException, prompt_tokens: int) -> Usage:
    """An error answer from the provider (an HTTP status) bills nothing; any other failure may have
    reached the provider, and bills the prompt."""
    if isinstance(getattr(exc, "status_code", None), int):
        return Usage(0, 0)
    return Usage(prompt_tokens, 0, source="estimated")


def embeddings_usage(answer: Any, plan: Plan) -> Usage:
    reported = attr(answer, "usage")
    return Usage.of(reported) if reported is not None else Usage(plan.prompt_tokens, 0, source="estimated")


class _Delegate:
    """Everything not guarded is the wrapped object's own."""

    def __init__(self, wrapped: Any) -> None:
        self._wrapped = wrapped

    def __getattr__(self, name: str) -> Any:
        if name == "_wrapped":  # not set yet: no delegation before __init__
            raise AttributeError(name)
        return getattr(self._wrapped, name)


# -- async ---------------------------------------------------------------------------------------------


class GuardedAsyncOpenAI(_Delegate):
    def __init__(self, client: Any, guard: Guard, caller: Caller) -> None:
        super().__init__(client)
        self.chat = _Delegate(client.chat)
        self.chat.completions = _AsyncCompletions(client.chat.completions, guard, caller)  # type: ignore[attr-defined]
        self.embeddings = _AsyncEmbeddings(client.embeddings, guard, caller)


class _AsyncGuarded(_Delegate):
    def __init__(self, resource: Any, guard: Guard, caller: Caller) -> None:
        super().__init__(resource)
        self._guard = guard
        self._caller = caller

    async def _admitted(self, plan: Plan) -> Call:
        return await self._guard.call(**self._caller.call_arguments(plan)).admit()

    async def _send(self, call: Call, arguments: dict[str, Any]) -> Any:
        try:
            return await self._wrapped.create(**arguments)
        except BaseException as exc:
            await call.finish(exc, failure_usage(exc, call.prompt_tokens))
            raise


class _AsyncCompletions(_AsyncGuarded):
    async def create(self, **arguments: Any) -> Any:
        count = self._guard.count_tokens
        plan = Plan.chat(arguments, count)
        call = await self._admitted(plan)
        answer = await self._send(call, plan.arguments)
        if plan.stream:
            return GuardedAsyncStream(answer, call, plan, count)
        await call.record(usage_of_answer(count, answer, plan.prompt_tokens, plan.max_tokens))
        return answer


class _AsyncEmbeddings(_AsyncGuarded):
    async def create(self, **arguments: Any) -> Any:
        plan = Plan.embeddings(arguments, self._guard.count_tokens)
        call = await self._admitted(plan)
        answer = await self._send(call, plan.arguments)
        await call.record(embeddings_usage(answer, plan))
        return answer


class GuardedAsyncStream(_Delegate):
    """The SDK's stream, chunk for chunk, recorded when it ends, breaks, or is closed or dropped."""

    def __init__(self, stream: Any, call: Call, plan: Plan, count: TokenCounter) -> None:
        super().__init__(stream)
        self._call = call
        self._plan = plan
        self._count = count
        self._tally = StreamTally()
        self._loop = asyncio.get_running_loop()
        self._chunks = self._relay()

    def __aiter__(self) -> GuardedAsyncStream:
        return self

    async def __anext__(self) -> Any:
        return await self._chunks.__anext__()

    async def _relay(self) -> AsyncGenerator[Any, None]:
        error: str | None = STREAM_CLOSED_EARLY
        failure: BaseException | None = None
        try:
            async for chunk in self._wrapped:
                if self._tally.add(chunk) and not self._plan.caller_wants_usage:
                    continue
                yield chunk
            error = None
        except GeneratorExit:
            raise
        except BaseException as exc:
            error, failure = describe(exc), exc
            raise
        finally:
            await self._finish(error, failure)

    async def _finish(self, error: str | None, failure: BaseException | None = None) -> None:
        if self._call.event is not None:
            return
        usage = self._tally.usage(self._count, self._plan.prompt_tokens, self._plan.max_tokens)
        if error is None:
            await self._call.record(usage)
        else:
            await self._call.finish(failure, usage, error)

    async def close(self) -> None:
        await self._chunks.aclose()
        await self._finish(STREAM_CLOSED_EARLY)  # a stream never iterated has no generator to finish it
        await self._wrapped.close()

    async def __aenter__(self) -> GuardedAsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __del__(self) -> None:
        if self._call.event is None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._call.guard.in_background, self._finish(STREAM_CLOSED_EARLY))


# -- sync ----------------------------------------------------------------------------------------------


class GuardedOpenAI(_Delegate):
    def __init__(self, client: Any, guard: SyncGuard, caller: Caller) -> None:
        super().__init__(client)
        self.chat = _Delegate(client.chat)
        self.chat.completions = _SyncCompletions(client.chat.completions, guard, caller)  # type: ignore[attr-defined]
        self.embeddings = _SyncEmbeddings(client.embeddings, guard, caller)


class _SyncGuarded(_Delegate):
    def __init__(self, resource: Any, guard: SyncGuard, caller: Caller) -> None:
        super().__init__(resource)
        self._guard = guard
        self._caller = caller

    def _admitted(self, plan: Plan) -> SyncCall:
        return self._guard.call(**self._caller.call_arguments(plan)).admit()

    def _send(self, call: SyncCall, arguments: dict[str, Any]) -> Any:
        try:
            return self._wrapped.create(**arguments)
        except BaseException as exc:
            call.finish(exc, failure_usage(exc, call.prompt_tokens))
            raise


class _SyncCompletions(_SyncGuarded):
    def create(self, **arguments: Any) -> Any:
        count = self._guard.count_tokens
        plan = Plan.chat(arguments, count)
        call = self._admitted(plan)
        answer = self._send(call, plan.arguments)
        if plan.stream:
            return GuardedStream(answer, call, plan, count)
        call.record(usage_of_answer(count, answer, plan.prompt_tokens, plan.max_tokens))
        return answer


class _SyncEmbeddings(_SyncGuarded):
    def create(self, **arguments: Any) -> Any:
        plan = Plan.embeddings(arguments, self._guard.count_tokens)
        call = self._admitted(plan)
        answer = self._send(call, plan.arguments)
        call.record(embeddings_usage(answer, plan))
        return answer


class GuardedStream(_Delegate):
    """The synchronous twin of GuardedAsyncStream."""

    def __init__(self, stream: Any, call: SyncCall, plan: Plan, count: TokenCounter) -> None:
        super().__init__(stream)
        self._call = call
        self._plan = plan
        self._count = count
        self._tally = StreamTally()
        self._chunks = self._relay()

    def __iter__(self) -> GuardedStream:
        return self

    def __next__(self) -> Any:
        return next(self._chunks)

    def _relay(self) -> Generator[Any, None, None]:
        error: str | None = STREAM_CLOSED_EARLY
        failure: BaseException | None = None
        try:
            for chunk in self._wrapped:
                if self._tally.add(chunk) and not self._plan.caller_wants_usage:
                    continue
                yield chunk
            error = None
        except GeneratorExit:
            raise
        except BaseException as exc:
            error, failure = describe(exc), exc
            raise
        finally:
            self._finish(error, failure)

    def _finish(self, error: str | None, failure: BaseException | None = None) -> None:
        if self._call.event is not None:
            return
        usage = self._tally.usage(self._count, self._plan.prompt_tokens, self._plan.max_tokens)
        if error is None:
            self._call.record(usage)
        else:
            self._call.finish(failure, usage, error)

    def close(self) -> None:
        self._chunks.close()
        self._finish(STREAM_CLOSED_EARLY)
        self._wrapped.close()

    def __enter__(self) -> GuardedStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if self._call.event is None:
            with contextlib.suppress(RuntimeError):  # the guard is closed, or this is its own thread
                self._finish(STREAM_CLOSED_EARLY)
