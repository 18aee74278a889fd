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

The wrappers know their guard only by what they use of it: a function that asks costwarden for one SDK
request and returns the admitted call (`AdmittedCall`: a `Call`; `SyncAdmittedCall`: a `SyncCall`), and
its token counter. `Guard.wrap` and `SyncGuard.wrap` hand them these, so the guards build the wrappers
and the wrappers never import the guards.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from costwarden_client.contract import LlmCompleted, Policy
from costwarden_client.tokens import (
    StreamTally,
    TokenCounter,
    Usage,
    attr,
    chat_prompt_tokens,
    embedding_input_tokens,
    usage_of_answer,
)

CHAT_ENDPOINT = "/v1/chat/completions"
EMBEDDINGS_ENDPOINT = "/v1/embeddings"
STREAM_CLOSED_EARLY = "the stream was closed before its end"


class AdmittedCall(Protocol):
    """What the async wrappers use of a call the limiter admitted (`Call`)."""

    @property
    def event(self) -> LlmCompleted | None: ...

    async def record(self, usage: Usage) -> None: ...

    async def finish(self, exc: BaseException | None = None, usage: Usage | None = None,
                     error: str | None = None) -> None: ...


class SyncAdmittedCall(Protocol):
    """What the synchronous wrappers use of a call the limiter admitted (`SyncCall`)."""

    @property
    def event(self) -> LlmCompleted | None: ...

    def record(self, usage: Usage) -> None: ...

    def finish(self, exc: BaseException | None = None, usage: Usage | None = None,
               error: str | None = None) -> None: ...


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

    def call_arguments(self, request: SdkRequest) -> dict[str, Any]:
        """The arguments of `Guard.call` (and `SyncGuard.call`) for `request` made for this caller."""
        return {"tier": self.tier, "user_id": self.user_id, "provider": self.provider, "client_ip": self.client_ip,
                "tags": self.tags, "session_id": self.session_id, "policy": self.policy, "model": request.model,
                "max_tokens": request.max_tokens, "prompt_tokens": request.prompt_tokens,
                "choices": request.choices, "endpoint": request.endpoint}


def _given_int(value: Any) -> int | None:
    """An int argument, or None for an absent one (the SDK's NOT_GIVEN and omit sentinels included)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class SdkRequest:
    """One `create` of the SDK as the guard sees it: what it asks of the limiter, and the arguments it is
    sent with."""

    endpoint: str
    model: str
    prompt_tokens: int
    arguments: dict[str, Any]
    max_tokens: int | None = None
    choices: int = 1
    stream: bool = False
    caller_wants_usage: bool = True

    @classmethod
    def chat(cls, arguments: Mapping[str, Any], count: TokenCounter) -> SdkRequest:
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
                   sent, _given_int(arguments.get("max_completion_tokens")) or _given_int(arguments.get("max_tokens")),
                   _given_int(arguments.get("n")) or 1, stream, wants_usage)

    @classmethod
    def embeddings(cls, arguments: Mapping[str, Any], count: TokenCounter) -> SdkRequest:
        # An embedding generates nothing: 1 is the least completion the contract takes.
        return cls(EMBEDDINGS_ENDPOINT, str(arguments["model"]),
                   embedding_input_tokens(count, arguments.get("input")), dict(arguments), max_tokens=1)


ReadRequest = Callable[[Mapping[str, Any], TokenCounter], SdkRequest]
Admit = Callable[[SdkRequest], Awaitable[AdmittedCall]]
SyncAdmit = Callable[[SdkRequest], SyncAdmittedCall]
InBackground = Callable[[Coroutine[Any, Any, None]], object]


def failure_usage(exc: BaseException, prompt_tokens: int) -> Usage:
    """An error answer from the provider (an HTTP status) bills nothing; any other failure may have
    reached the provider, and bills the prompt."""
    if isinstance(getattr(exc, "status_code", None), int):
        return Usage(0, 0)
    return Usage(prompt_tokens, 0, source="estimated")


class _Delegate:
    """Everything not guarded is the wrapped object's own."""

    def __init__(self, wrapped: Any) -> None:
        self._wrapped = wrapped

    def __getattr__(self, name: str) -> Any:
        if name == "_wrapped":  # not set yet: no delegation before __init__
            raise AttributeError(name)
        return getattr(self._wrapped, name)


class _TalliedStream(_Delegate):
    """What a guarded stream, async or not, keeps of the chunks it passes on."""

    def __init__(self, stream: Any, request: SdkRequest, count: TokenCounter) -> None:
        super().__init__(stream)
        self._request = request
        self._count = count
        self._tally = StreamTally()

    def _shown(self, chunk: Any) -> bool:
        """Tally `chunk`; False for the usage chunk that the caller did not ask for."""
        return not self._tally.add(chunk) or self._request.caller_wants_usage

    def _usage(self) -> Usage:
        return self._tally.usage(self._count, self._request.prompt_tokens, self._request.max_tokens)


# -- async ---------------------------------------------------------------------------------------------


class GuardedAsyncOpenAI(_Delegate):
    """An `openai.AsyncOpenAI` whose chat completions and embeddings are guarded (`Guard.wrap`)."""

    def __init__(self, client: Any, admit: Admit, count: TokenCounter, in_background: InBackground) -> None:
        """`in_background` runs the record of a stream dropped unclosed in a task its guard waits for."""
        super().__init__(client)
        self.chat = _Delegate(client.chat)
        self.chat.completions = _AsyncGuardedCreate(  # type: ignore[attr-defined]
            client.chat.completions, SdkRequest.chat, admit, count, in_background)
        self.embeddings = _AsyncGuardedCreate(client.embeddings, SdkRequest.embeddings, admit, count, in_background)


class _AsyncGuardedCreate(_Delegate):
    """An SDK resource (`chat.completions`, `embeddings`) whose `create` is a guarded call."""

    def __init__(self, resource: Any, read: ReadRequest, admit: Admit, count: TokenCounter,
                 in_background: InBackground) -> None:
        super().__init__(resource)
        self._read = read
        self._admit = admit
        self._count = count
        self._in_background = in_background

    async def create(self, **arguments: Any) -> Any:
        request = self._read(arguments, self._count)
        call = await self._admit(request)
        try:
            answer = await self._wrapped.create(**request.arguments)
        except BaseException as exc:
            await call.finish(exc, failure_usage(exc, request.prompt_tokens))
            raise
        if request.stream:
            return GuardedAsyncStream(answer, call, request, self._count, self._in_background)
        await call.record(usage_of_answer(self._count, answer, request.prompt_tokens, request.max_tokens))
        return answer


class GuardedAsyncStream(_TalliedStream):
    """The SDK's stream, chunk for chunk, recorded when it ends, breaks, or is closed or dropped."""

    def __init__(self, stream: Any, call: AdmittedCall, request: SdkRequest, count: TokenCounter,
                 in_background: InBackground) -> None:
        super().__init__(stream, request, count)
        self._call = call
        self._in_background = in_background
        self._loop = asyncio.get_running_loop()
        self._chunks = self._relay()

    def __aiter__(self) -> GuardedAsyncStream:
        return self

    async def __anext__(self) -> Any:
        return await self._chunks.__anext__()

    async def _relay(self) -> AsyncGenerator[Any, None]:
        try:
            async for chunk in self._wrapped:
                if self._shown(chunk):
                    yield chunk
        except BaseException as exc:  # GeneratorExit: closed, or dropped, before its end
            await self._fail(None if isinstance(exc, GeneratorExit) else exc)
            raise
        await self._call.record(self._usage())

    async def _fail(self, exc: BaseException | None = None) -> None:
        """Record the stream, unless it is, as failed: with `exc`, or as closed before its end."""
        if self._call.event is None:
            await self._call.finish(exc, self._usage(), STREAM_CLOSED_EARLY if exc is None else None)

    async def close(self) -> None:
        await self._chunks.aclose()
        await self._fail()  # a stream never iterated has no generator to record it
        await self._wrapped.close()

    async def __aenter__(self) -> GuardedAsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __del__(self) -> None:
        if self._call.event is None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._in_background, self._fail())


# -- sync ----------------------------------------------------------------------------------------------


class GuardedOpenAI(_Delegate):
    """An `openai.OpenAI` whose chat completions and embeddings are guarded (`SyncGuard.wrap`)."""

    def __init__(self, client: Any, admit: SyncAdmit, count: TokenCounter) -> None:
        super().__init__(client)
        self.chat = _Delegate(client.chat)
        self.chat.completions = _SyncGuardedCreate(  # type: ignore[attr-defined]
            client.chat.completions, SdkRequest.chat, admit, count)
        self.embeddings = _SyncGuardedCreate(client.embeddings, SdkRequest.embeddings, admit, count)


class _SyncGuardedCreate(_Delegate):
    """The synchronous twin of _AsyncGuardedCreate."""

    def __init__(self, resource: Any, read: ReadRequest, admit: SyncAdmit, count: TokenCounter) -> None:
        super().__init__(resource)
        self._read = read
        self._admit = admit
        self._count = count

    def create(self, **arguments: Any) -> Any:
        request = self._read(arguments, self._count)
        call = self._admit(request)
        try:
            answer = self._wrapped.create(**request.arguments)
        except BaseException as exc:
            call.finish(exc, failure_usage(exc, request.prompt_tokens))
            raise
        if request.stream:
            return GuardedStream(answer, call, request, self._count)
        call.record(usage_of_answer(self._count, answer, request.prompt_tokens, request.max_tokens))
        return answer


class GuardedStream(_TalliedStream):
    """The synchronous twin of GuardedAsyncStream."""

    def __init__(self, stream: Any, call: SyncAdmittedCall, request: SdkRequest, count: TokenCounter) -> None:
        super().__init__(stream, request, count)
        self._call = call
        self._chunks = self._relay()

    def __iter__(self) -> GuardedStream:
        return self

    def __next__(self) -> Any:
        return next(self._chunks)

    def _relay(self) -> Generator[Any, None, None]:
        try:
            for chunk in self._wrapped:
                if self._shown(chunk):
                    yield chunk
        except BaseException as exc:  # GeneratorExit: closed, or dropped, before its end
            self._fail(None if isinstance(exc, GeneratorExit) else exc)
            raise
        self._call.record(self._usage())

    def _fail(self, exc: BaseException | None = None) -> None:
        """Record the stream, unless it is, as failed: with `exc`, or as closed before its end."""
        if self._call.event is None:
            self._call.finish(exc, self._usage(), STREAM_CLOSED_EARLY if exc is None else None)

    def close(self) -> None:
        self._chunks.close()
        self._fail()
        self._wrapped.close()

    def __enter__(self) -> GuardedStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if self._call.event is None:
            with contextlib.suppress(RuntimeError):  # the guard is closed, or this is its own thread
                self._fail()
