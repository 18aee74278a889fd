"""The gateway's use case once a call is admitted, apart from HTTP: call a provider (through the model's
routes) and record what happened on `llm.completed`, for a plain answer, a stream or embeddings; hand a
complete answer to the response cache when the call is to be cached, and record a call the cache
answered."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from services.api.calls import BilledTo, CallContext, CallFailed, CompletionPublisher, completed_event
from services.api.providers import Operation, ProviderCall, ProviderRouter, ProvidersFailed
from services.api.response_cache import AnswerKeeper, CachedAnswer
from services.api.streams import BackgroundTasks, StreamRelay
from services.api.usage import TokenCounter, usage_of_answer


class Gateway:
    def __init__(self, router: ProviderRouter, publisher: CompletionPublisher, counter: TokenCounter) -> None:
        self.router = router
        self.publisher = publisher
        self.counter = counter
        self.background = BackgroundTasks()

    async def _call(self, ctx: CallContext, payload: Mapping[str, Any], operation: Operation
                    ) -> tuple[ProviderCall, float]:
        """The provider's answer; CallFailed (recorded first) when none answers."""
        started = time.perf_counter()
        try:
            call = await self.router.call(ctx.model, ctx.routes, payload, operation, ctx.strategy,
                                          ctx.worst_case_tokens)
        except ProvidersFailed as exc:
            billed_to, usage = BilledTo.failure(exc.attempts, ctx.prompt_tokens)
            await self.publisher.publish(completed_event(ctx, billed_to, started, usage, str(exc)))
            raise CallFailed(ctx.request_id, exc) from None
        return call, started

    async def complete(self, ctx: CallContext, payload: Mapping[str, Any], operation: Operation = "chat",
                       keep: AnswerKeeper | None = None) -> ProviderCall:
        """A plain answer (`operation` chat) or embeddings, relayed whole, and kept by `keep` if given."""
        call, started = await self._call(ctx, payload, operation)
        usage = usage_of_answer(self.counter, call.body, ctx.prompt_tokens, ctx.max_tokens)
        await self.publisher.publish(completed_event(ctx, BilledTo.answer(call, ctx.prompt_tokens), started, usage,
                                                     None))
        if keep is not None:
            await keep(CachedAnswer(call.provider, call.upstream_model, usage, 0.0, body=call.raw.decode()))
        return call

    async def open_stream(self, ctx: CallContext, payload: Mapping[str, Any], forward_usage_chunk: bool,
                          keep: AnswerKeeper | None = None) -> StreamRelay:
        """Fallback is possible only until the first byte: the provider is chosen here, before relaying.
        The provider is asked for its usage in the stream; the caller gets that chunk only if it asked."""
        stream_payload = {**payload, "stream": True,
                          "stream_options": {**(payload.get("stream_options") or {}), "include_usage": True}}
        call, started = await self._call(ctx, stream_payload, "stream")
        return StreamRelay(call, ctx, started, self.counter, self.publisher, self.background, forward_usage_chunk,
                           keep)

    async def replay(self, ctx: CallContext, answer: CachedAnswer) -> None:
        """Record a call the cache answered (`ctx.cache_hit`): with the cached answer's usage and who gave
        it; no provider was called."""
        await self.publisher.publish(completed_event(ctx, BilledTo(answer.provider, answer.served_model, []),
                                                     time.perf_counter(), answer.usage, None))

    async def drain(self, publish_timeout_s: float = 10.0) -> None:
        await self.background.drain()
        await self.publisher.drain(publish_timeout_s)
        await self.router.aclose()

