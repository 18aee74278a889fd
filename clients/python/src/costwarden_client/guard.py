"""Ask costwarden before an LLM call and record the call after it, over NATS.

    async with await Guard.connect() as guard:          # NATS_URL, NATS_NKEY_SEED_FILE
        async with guard.call(user_id="u1", tier="free", model="gpt-4o-mini", provider="openai",
                              max_tokens=200, prompt=messages) as call:
            answer = await my_provider_call(...)
            await call.record(answer.usage)

Entering the block asks `llm.request`: a denial raises `RateLimited` carrying the limiter's whole
decision. `record` publishes `llm.completed` once, with the request id as `Nats-Msg-Id`, and retries
until JetStream acknowledges it. Leaving the block without a record (an exception, a cancellation, a
return) records what is known: the prompt estimate, marked estimated, and the error. So the limiter's
reservation is settled at once instead of waiting for its expiry, and a prompt that may have reached a
provider is never billed at $0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import Coroutine, Mapping, Sequence
from datetime import UTC, timedelta
from types import TracebackType
from typing import Annotated, Any, Literal

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from pydantic import Field, TypeAdapter

from costwarden_client.contract import (
    LLM_COMPLETED,
    LLM_REQUEST,
    MAX_ERROR_CHARS,
    MAX_TAGS,
    UPSTREAM_INBOX_PREFIX,
    BilledAttempt,
    LimitDecision,
    LimitRequest,
    LlmCompleted,
    Policy,
    TagName,
    TagValue,
    new_id,
    utc_now,
)
from costwarden_client.openai_wrap import Caller, GuardedAsyncOpenAI, SdkRequest
from costwarden_client.tokens import TokenCounter, Usage, chat_prompt_tokens, default_counter

log = logging.getLogger("costwarden_client")

FailureMode = Literal["closed", "open"]
DEFAULT_SERVERS = "nats://127.0.0.1:4222"
# What may clear up when the publish is tried again: no ack in time, no stream answering yet (a cluster
# electing a leader), the connection being re-established.
RETRYABLE_PUBLISH_ERRORS = (
    nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError, nats.js.errors.ServerError, nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError, nats.errors.StaleConnectionError)
# Tags are checked when the call is opened: a bad one found only by `record` would fail after the provider
# was called, leaving the reservation to expire.
VALID_TAGS: TypeAdapter[dict[str, str]] = TypeAdapter(Annotated[dict[TagName, TagValue], Field(max_length=MAX_TAGS)])


class CostwardenError(Exception):
    """Anything this client raises about costwarden itself."""


class RateLimited(CostwardenError):  # noqa: N818 (callers catch what happened)
    """The limiter did not admit the call. `decision` is its whole answer: every field it sent, those this
    client does not know by name included (`decision.model_extra`, or as attributes)."""

    def __init__(self, decision: LimitDecision) -> None:
        self.decision = decision
        super().__init__(decision.reason or f"not admitted ({decision.limited_by or 'denied'})")

    @property
    def retry_after_s(self) -> int:
        """Whole seconds to wait before asking again, rounded up (never 0)."""
        return max(1, math.ceil(self.decision.retry_after_s))

    def body(self, upgrade_url: str | None = None) -> dict[str, Any]:
        """The 429 body costwarden's gateway answers for this decision (the original system's fields),
        followed by any field of the decision this client does not know by name."""
        reset_at = self.decision.reset_at.astimezone(UTC)
        if reset_at.microsecond:  # rounded up: a client told this time never comes back early
            reset_at = reset_at.replace(microsecond=0) + timedelta(seconds=1)
        body: dict[str, Any] = {
            "error": "Rate limit exceeded", "message": self.decision.reason, "tier": self.decision.tier,
            "limit": self.decision.limit, "windowMs": self.decision.window_s * 1000,
            "retryAfter": reset_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if upgrade_url is not None:
            body["upgradeUrl"] = upgrade_url
        body.update({name: value for name, value in (self.decision.model_extra or {}).items() if value is not None})
        return body


class LimiterUnavailable(RateLimited):
    """No limiter answered (or its storage did not), and the failure mode is `closed`."""


class InvalidRequest(CostwardenError):
    """The limiter refused the question as malformed: `reason` says what is wrong."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"llm.request refused: {reason}")


class RecordFailed(CostwardenError):
    """`llm.completed` was not acknowledged within the guard's `record_patience_s`."""


def error_text(exc: BaseException) -> str:
    """What a record says of the exception that ended its call."""
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Guard:
    """One NATS connection's worth of guarded calls. Safe to share between tasks."""

    def __init__(self, nc: NatsClient, *, request_timeout_s: float = 2.0, failure_mode: FailureMode = "closed",
                 ack_timeout_s: float = 2.0, record_patience_s: float = 120.0,
                 count_tokens: TokenCounter | None = None, owns_connection: bool = False) -> None:
        """`request_timeout_s`: how long to wait for the limiter's answer; then `failure_mode` decides
        (closed: `LimiterUnavailable`; open: the call goes ahead unchecked). `ack_timeout_s`: how long one
        publish of `llm.completed` waits for JetStream's ack; it is published again, with the same
        Nats-Msg-Id, until acknowledged or `record_patience_s` has passed (then `RecordFailed`)."""
        self.nc = nc
        self.js = nc.jetstream()
        self.request_timeout_s = request_timeout_s
        self.failure_mode = failure_mode
        self.ack_timeout_s = ack_timeout_s
        self.record_patience_s = record_patience_s
        self._count_tokens = count_tokens
        self._owns_connection = owns_connection
        self._background: set[asyncio.Task[None]] = set()

    @classmethod
    async def connect(cls, servers: str | Sequence[str] | None = None, *, nkey_seed_file: str | None = None,
                      inbox_prefix: str = UPSTREAM_INBOX_PREFIX, name: str = "costwarden-upstream",
                      **options: Any) -> Guard:
        """Connect as the services do: `servers` a comma-separated list or a sequence (default NATS_URL,
        else nats://127.0.0.1:4222), `nkey_seed_file` the identity's NKEY seed (default
        NATS_NKEY_SEED_FILE; the `upstream` identity of `costwarden nats-config`), replies under the
        upstream role's inbox prefix, reconnecting for ever. Other keywords go to `Guard(...)`."""
        raw = servers if servers is not None else os.environ.get("NATS_URL", DEFAULT_SERVERS)
        server_list = [s.strip() for s in raw.split(",") if s.strip()] if isinstance(raw, str) else list(raw)
        seed = nkey_seed_file or os.environ.get("NATS_NKEY_SEED_FILE") or None
        connection: dict[str, Any] = {"servers": server_list, "name": name, "inbox_prefix": inbox_prefix,
                                      "max_reconnect_attempts": -1, "reconnect_time_wait": 1}
        if seed:
            connection["nkeys_seed"] = seed
        nc = await nats.connect(**connection)
        return cls(nc, owns_connection=True, **options)

    @property
    def count_tokens(self) -> TokenCounter:
        return self._count_tokens or default_counter()

    def call(self, *, tier: str, model: str, provider: str, user_id: str | None = None,
             client_ip: str | None = None, max_tokens: int | None = None, prompt: Any = None,
             prompt_tokens: int | None = None, choices: int = 1, endpoint: str = "/v1/chat/completions",
             policy: Policy = "standard", tags: Mapping[str, str] | None = None, session_id: str | None = None,
             request_id: str | None = None) -> Call:
        """A guarded call (an async context manager). The prompt is `prompt_tokens`, or counted from
        `prompt` (a string, or chat messages); the limiter reserves it plus `max_tokens` for each of
        `choices`. `request_id` defaults to a new one; pass your own so that a job run again after a crash
        between ask and record gets its open reservation back instead of a second one."""
        if (prompt is None) == (prompt_tokens is None):
            raise ValueError("give the prompt or its token count (prompt= or prompt_tokens=), one of them")
        if prompt_tokens is None:
            prompt_tokens = (self.count_tokens(prompt) if isinstance(prompt, str)
                             else chat_prompt_tokens(self.count_tokens, prompt))
        request = LimitRequest(request_id=request_id or new_id(), user_id=user_id,
                               client_ip=client_ip, tier=tier, endpoint=endpoint, policy=policy, model=model,
                               prompt_tokens_estimate=prompt_tokens, max_tokens=max_tokens, choices=choices)
        return Call(self, request, provider, VALID_TAGS.validate_python(dict(tags or {})), session_id)

    async def admit(self, request: LimitRequest) -> LimitDecision:
        """The limiter's decision; raises `RateLimited` (or `LimiterUnavailable`) when it is no."""
        try:
            reply = await self.nc.request(LLM_REQUEST, request.model_dump_json().encode(),
                                          timeout=self.request_timeout_s)
        except nats.errors.Error as exc:  # timeout, no responders, connection closed or reconnecting
            decision = self._unavailable(request, type(exc).__name__)
        else:
            decision = self._decision(reply.data)
        if decision.allowed:
            return decision
        if decision.limited_by == "unavailable":
            raise LimiterUnavailable(decision)
        raise RateLimited(decision)

    @staticmethod
    def _decision(data: bytes) -> LimitDecision:
        answer = json.loads(data)
        if isinstance(answer, dict) and "allowed" not in answer and "error" in answer:
            raise InvalidRequest(str(answer.get("reason") or answer["error"]))
        return LimitDecision.model_validate(answer)

    def _unavailable(self, request: LimitRequest, cause: str) -> LimitDecision:
        allowed = self.failure_mode == "open"
        log.warning("no limiter answered request %s (%s); failing %s", request.request_id, cause, self.failure_mode)
        now = utc_now()
        return LimitDecision(allowed=allowed, tier=request.tier, policy=request.policy, limit=0, remaining=0,
                             window_s=0, reset_at=now, retry_after_s=0 if allowed else 5,
                             reason="Rate limiter unavailable; " + (
                                 "call allowed without a limit check" if allowed else "try again shortly"),
                             limited_by="unavailable")

    async def publish(self, event: LlmCompleted) -> None:
        """Publish `llm.completed` until JetStream acknowledges it. Cancelling the caller does not stop
        that: the rest is handed to a task of the guard's, which `close()` waits for."""
        deadline = asyncio.get_running_loop().time() + self.record_patience_s
        try:
            await self._publish_until_acknowledged(event, deadline)
        except asyncio.CancelledError:
            self.in_background(self._publish_unattended(event, deadline))
            raise

    async def _publish_unattended(self, event: LlmCompleted, deadline: float) -> None:
        """The rest of a publication whose caller was cancelled; nobody waits for it, so a failure is logged."""
        try:
            await self._publish_until_acknowledged(event, deadline)
        except RecordFailed:
            log.exception("llm.completed for %s is lost (its caller was cancelled)", event.request_id)

    async def _publish_until_acknowledged(self, event: LlmCompleted, deadline: float) -> None:
        """Publish with the request id as Nats-Msg-Id, again and again until JetStream acknowledges it (a
        re-publication the stream already holds is acknowledged as a duplicate) or `deadline` passes."""
        payload = event.model_dump_json().encode()
        loop = asyncio.get_running_loop()
        backoff_s = 0.1
        while True:
            try:
                await self.js.publish(LLM_COMPLETED, payload, timeout=self.ack_timeout_s,
                                      headers={"Nats-Msg-Id": event.request_id})
                return
            except RETRYABLE_PUBLISH_ERRORS as exc:
                if loop.time() + backoff_s > deadline:
                    raise RecordFailed(f"llm.completed for {event.request_id} not acknowledged within "
                                       f"{self.record_patience_s:g}s ({type(exc).__name__})") from exc
                log.warning("llm.completed for %s not acknowledged (%s); publishing it again",
                            event.request_id, type(exc).__name__)
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, 2.0)

    def in_background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `work` in a task that `close()` waits for."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def wrap(self, client: Any, *, tier: str, user_id: str | None = None, provider: str = "openai",
             client_ip: str | None = None, tags: Mapping[str, str] | None = None,
             session_id: str | None = None, policy: Policy = "standard") -> GuardedAsyncOpenAI:
        """`client` (an `openai.AsyncOpenAI`) whose `chat.completions.create` and `embeddings.create`,
        plain or streamed, are guarded calls for this caller; everything else is the client's own."""
        caller = Caller(tier=tier, user_id=user_id, provider=provider, client_ip=client_ip,
                        tags=dict(tags or {}), session_id=session_id, policy=policy)

        async def admit(request: SdkRequest) -> Call:
            return await self.call(**caller.call_arguments(request)).admit()

        return GuardedAsyncOpenAI(client, admit, self.count_tokens, self.in_background)

    async def close(self) -> None:
        """Wait for the records still being published, then close the connection if the guard opened it."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._owns_connection and not self.nc.is_closed:
            await self.nc.drain()

    async def __aenter__(self) -> Guard:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Call:
    """One guarded call: admitted on entering (`admit`), recorded once (`record`), and on leaving
    (`finish`) recorded with what is known if it was not."""

    def __init__(self, guard: Guard, request: LimitRequest, provider: str, tags: dict[str, str],
                 session_id: str | None) -> None:
        self.guard = guard
        self.request = request
        self.provider = provider
        self.tags = tags
        self.session_id = session_id
        self.decision: LimitDecision | None = None
        self.event: LlmCompleted | None = None
        self._started = time.perf_counter()

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def prompt_tokens(self) -> int:
        """The prompt estimate the limiter reserved for."""
        return self.request.prompt_tokens_estimate

    async def admit(self) -> Call:
        self.decision = await self.guard.admit(self.request)
        self._started = time.perf_counter()
        return self

    async def record(self, usage: Any, *, served_model: str | None = None, provider: str | None = None,
                     success: bool = True, error: str | None = None,
                     billed_attempts: Sequence[BilledAttempt] = ()) -> None:
        """Publish what the call used (a `Usage`, or a provider's usage object or dict), once; returns
        when JetStream has it. Cancelling the caller does not stop the publication (`Guard.close()` waits
        for it). `served_model`: the provider's own id of the model that answered, when it differs from
        the model asked for."""
        if self.event is not None:
            raise RuntimeError(f"call {self.request_id} is recorded already")
        self.event = self._completed_event(Usage.of(usage), served_model, provider, success, error, billed_attempts)
        await self.guard.publish(self.event)

    def _completed_event(self, usage: Usage, served_model: str | None, provider: str | None, success: bool,
                         error: str | None, billed_attempts: Sequence[BilledAttempt]) -> LlmCompleted:
        request = self.request
        return LlmCompleted(
            id=request.request_id, request_id=request.request_id, user_id=request.user_id,
            session_id=self.session_id, client_ip=request.client_ip, tier=request.tier,
            provider=provider or self.provider, model=request.model, served_model=served_model,
            prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
            cached_prompt_tokens=usage.cached_prompt_tokens, billed_attempts=list(billed_attempts),
            endpoint=request.endpoint, success=success, error=error[:MAX_ERROR_CHARS] if error else None,
            latency_ms=int((time.perf_counter() - self._started) * 1000), tags=self.tags,
            usage_source=usage.source, team_id=self.decision.team_id if self.decision else None)

    async def finish(self, exc: BaseException | None = None, usage: Usage | None = None,
                     error: str | None = None) -> None:
        """Record the call as failed if nothing was recorded: with `usage` (by default the prompt estimate,
        marked estimated) and `error` (by default `exc` described). A publish that fails here is logged,
        not raised over the caller's own exception."""
        if self.event is not None or self.decision is None:
            return
        if error is None:
            error = error_text(exc) if exc is not None else "the guarded block ended without recording the call"
        usage = usage or Usage(self.prompt_tokens, 0, source="estimated")
        self.event = self._completed_event(usage, None, None, False, error, ())
        try:
            await self.guard.publish(self.event)
        except RecordFailed:
            if exc is None:
                raise
            log.exception("call %s could not be recorded after: %s", self.request_id, error)

    async def __aenter__(self) -> Call:
        return await self.admit()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.finish(exc)
