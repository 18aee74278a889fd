"""The gateway's response cache, apart from HTTP and Redis: which calls are cached and for whom (a model's
policy, the caller's scope), the canonical key of a request, what a request's Cache-Control and
X-Costwarden-Cache-TTL headers ask, and a cached answer as it is stored and replayed (a plain answer as
a stream and a stream as a plain answer). The store is a port (redis_response_cache.py is its adapter);
one that does not answer makes the call a `bypass`, never an error.

The key is the SHA-256 of the request as it changes the answer (the public model, where it is served
(its routes, read once at start) and every body parameter but `stream`, `stream_options` and `user`;
headers, request ids and tags never count) and the caller's scope: its team, else its user; `shared`
models have one scope for everyone. A plain and a streamed request of the same body share their entry."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from services.api.callers import Caller
from services.api.usage import Usage
from shared.policy import CacheConfig, ModelConfig, ModelRoute, ModelServes

CACHE_HEADER = "X-Costwarden-Cache"
TTL_HEADER = "X-Costwarden-Cache-TTL"
KEY_PREFIX = "cwapi:cache:"
# Body parameters that change how an answer is delivered or attributed, not what it says.
IGNORED_PARAMETERS = frozenset({"stream", "stream_options", "user"})
SHARED_SCOPE = "*"
SECONDS = re.compile(r"[0-9]+")
LONGEST_DELTA_S = 2**31

CacheResult = Literal["hit", "miss", "bypass"]


class BadCacheHeader(ValueError):
    """A cache header whose value cannot be read; `header` names it."""

    def __init__(self, header: str, message: str) -> None:
        super().__init__(message)
        self.header = header


class CacheUnavailable(Exception):
    """The cache store did not answer (down, slow or refusing)."""


class ResponseCacheStore(Protocol):
    async def get(self, key: str) -> bytes | None:
        """The entry stored under `key`, or None; CacheUnavailable."""
        ...

    async def put(self, key: str, value: bytes, ttl_s: int) -> None:
        """Store `value` under `key` for `ttl_s` seconds; CacheUnavailable."""
        ...


@dataclass(frozen=True, slots=True)
class ModelCachePolicy:
    """`routes` is a digest of where the model is served: re-pointing it starts new entries."""

    ttl_s: int
    shared: bool
    max_entry_bytes: int
    routes: str = ""


def routes_digest(routes: Iterable[ModelRoute]) -> str:
    """The providers and their models, in order (weights change shares, not answers)."""
    served = json.dumps([[route.provider, route.model] for route in routes], separators=(",", ":"))
    return hashlib.sha256(served.encode()).hexdigest()[:16]


def cache_policies(config: CacheConfig, models: Mapping[str, ModelConfig]) -> dict[str, ModelCachePolicy]:
    """The models whose answers are cached, each with its policy; a model's own `cache` wins over the
    global one."""
    policies = {}
    for name, model in models.items():
        own = model.cache
        enabled = config.enabled if own is None or own.enabled is None else own.enabled
        if enabled:
            policies[name] = ModelCachePolicy(own.ttl_s if own and own.ttl_s else config.ttl_s,
                                              bool(own and own.shared), config.max_entry_bytes,
                                              routes_digest(model.routes))
    return policies


@dataclass(frozen=True, slots=True)
class Directives:
    """What a request asks of the cache: look up (`read`), store the answer (`write`), the oldest entry
    it accepts, and its entry's lifetime."""

    read: bool = True
    write: bool = True
    max_age_s: int | None = None
    ttl_s: int | None = None


def _whole_seconds(header: str, text: str, least: int) -> int:
    """ASCII digits only; a value past 2^31 reads as 2^31 (RFC 9111 §1.2.2), so that no length of digits
    is ever converted."""
    digits = text.lstrip("0") or "0"
    seconds = (int(digits) if len(digits) <= 10 else LONGEST_DELTA_S) if SECONDS.fullmatch(text) else -1
    if seconds < least:
        raise BadCacheHeader(header, f"{header} must be a whole number of seconds of at least {least}, not "
                                     f"{text[:20]!r}")
    return min(seconds, LONGEST_DELTA_S)


def directives(cache_control: str | None, ttl: str | None) -> Directives:
    """`Cache-Control: no-store` (neither read nor write), `no-cache` (skip the lookup, store the fresh
    answer), `max-age=N` (accept an entry at most N s old); other directives are ignored, as HTTP says.
    `X-Costwarden-Cache-TTL: N` (N >= 1) is the entry's lifetime. BadCacheHeader for a value not read."""
    read = write = True
    max_age = None
    for part in (cache_control or "").split(","):
        name, sep, value = part.strip().partition("=")
        name = name.strip().lower()
        if name == "no-store":
            read = write = False
        elif name == "no-cache":
            read = False
        elif name == "max-age":
            max_age = _whole_seconds("Cache-Control", value.strip().strip('"') if sep else "", 0)
    return Directives(read, write, max_age,
                      _whole_seconds(TTL_HEADER, ttl.strip(), 1) if ttl is not None else None)


def scope_of(caller: Caller, shared: bool) -> str | None:
    """Whose entries a caller reads and writes: everyone's for a shared model, else its team's, else its
    user's; None for an anonymous caller of a model that is not shared (never cached)."""
    if shared:
        return SHARED_SCOPE
    if caller.team_id:
        return f"team:{caller.team_id}"
    return f"user:{caller.user_id}" if caller.user_id else None


def canonical_request(serves: ModelServes, model: str, payload: Mapping[str, Any], scope: str, routes: str) -> bytes:
    """The request as it changes the answer, in one spelling: keys sorted, no spaces."""
    body = {name: value for name, value in payload.items() if name not in IGNORED_PARAMETERS}
    body["model"] = model
    return json.dumps({"serves": serves, "scope": scope, "routes": routes, "request": body}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False).encode()


def cache_key(serves: ModelServes, model: str, payload: Mapping[str, Any], scope: str, routes: str) -> str:
    return KEY_PREFIX + hashlib.sha256(canonical_request(serves, model, payload, scope, routes)).hexdigest()


@dataclass(frozen=True, slots=True)
class CachePlan:
    """One call's use of the cache; `key` is None when it is not used at all (bypass)."""

    key: str | None
    read: bool
    write: bool
    max_age_s: int | None
    ttl_s: int
    max_entry_bytes: int

    @property
    def bypassed(self) -> bool:
        return self.key is None or not (self.read or self.write)


def stream_chunks(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A plain chat answer as the chunks a stream of it would have carried: per choice its message (and
    logprobs) in one delta, then its finish reason; then the usage, in a chunk without choices."""
    base = {"id": body.get("id"), "object": "chat.completion.chunk", "created": body.get("created"),
            "model": body.get("model")}
    if body.get("system_fingerprint") is not None:
        base["system_fingerprint"] = body["system_fingerprint"]
    chunks = []
    for position, choice in enumerate(body.get("choices") or ()):
        index = choice.get("index", position)
        delta = {name: value for name, value in (choice.get("message") or {}).items() if value is not None}
        if "tool_calls" in delta:
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(delta["tool_calls"])]
        content = {"index": index, "delta": delta, "finish_reason": None}
        if "logprobs" in choice:
            content["logprobs"] = choice["logprobs"]
        chunks.append({**base, "choices": [content]})
        chunks.append({**base, "choices": [{"index": index, "delta": {},
                                             "finish_reason": choice.get("finish_reason") or "stop"}]})
    if body.get("usage") is not None:
        chunks.append({**base, "choices": [], "usage": body["usage"]})
    return chunks


def _merge_tool_calls(calls: dict[int, dict[str, Any]], deltas: Iterable[Mapping[str, Any]]) -> None:
    for position, delta in enumerate(deltas):
        call = calls.setdefault(int(delta.get("index", position)), {"function": {"name": "", "arguments": ""}})
        for name in ("id", "type"):
            if delta.get(name) is not None:
                call[name] = delta[name]
        function = delta.get("function") or {}
        for name in ("name", "arguments"):
            call["function"][name] += function.get(name) or ""


def _add_delta(message: dict[str, Any], calls: dict[int, dict[str, Any]], delta: Mapping[str, Any]) -> None:
    for name, value in delta.items():
        if name == "tool_calls":
            _merge_tool_calls(calls, value or ())
        elif isinstance(value, str) and name != "role":
            message[name] = (message.get(name) or "") + value
        elif value is not None:
            message[name] = value


def _joined_logprobs(joined: Mapping[str, Any] | None, more: Any) -> Mapping[str, Any] | None:
    """A choice's logprobs across chunks: their token lists (`content`, `refusal`) joined."""
    if not isinstance(more, Mapping):
        return joined
    together = dict(joined or {})
    for name, value in more.items():
        if isinstance(value, list):
            together[name] = [*(together.get(name) or ()), *value]
        else:
            together.setdefault(name, value)
    return together


def assembled(chunks: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A stream's chunks as the plain answer they make: each choice's deltas joined into its message, its
    logprobs into one."""
    first: Mapping[str, Any] = {}
    usage = None
    choices: dict[int, tuple[dict[str, Any], dict[int, dict[str, Any]], dict[str, Any]]] = {}
    for chunk in chunks:
        first = first or chunk
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or ():
            index = int(choice.get("index") or 0)
            message, calls, ending = choices.setdefault(index, ({}, {}, {"finish_reason": None}))
            _add_delta(message, calls, choice.get("delta") or {})
            ending["finish_reason"] = choice.get("finish_reason") or ending["finish_reason"]
            if "logprobs" in choice:
                ending["logprobs"] = _joined_logprobs(ending.get("logprobs"), choice["logprobs"])
    answer: dict[str, Any] = {"id": first.get("id"), "object": "chat.completion", "created": first.get("created"),
                              "model": first.get("model"), "choices": []}
    if first.get("system_fingerprint") is not None:
        answer["system_fingerprint"] = first["system_fingerprint"]
    for index in sorted(choices):
        message, calls, ending = choices[index]
        message = {"role": message.pop("role", "assistant"), **message}
        if calls:
            message["tool_calls"] = [calls[i] for i in sorted(calls)]
        answer["choices"].append({"index": index, "message": message, **ending})
    if usage is not None:
        answer["usage"] = usage
    return answer


def sse(data: str) -> bytes:
    return f"data: {data}\n\n".encode()


DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A complete, successful answer as stored: who answered, the usage its call was recorded with, when
    it was stored (epoch seconds), and either a plain answer's JSON (`body`) or a stream's chunks."""

    provider: str
    served_model: str | None
    usage: Usage
    stored_at: float
    body: str | None = None
    chunks: tuple[str, ...] = ()

    def encode(self) -> bytes:
        """A JSON line of what is known about it, then the body, or the chunks one a line (an SSE data
        line is never more than one line)."""
        usage = self.usage
        head = {"provider": self.provider, "served_model": self.served_model, "at": self.stored_at,
                "usage": [usage.prompt_tokens, usage.completion_tokens, usage.cached_prompt_tokens,
                          usage.cache_write_prompt_tokens, usage.source],
                "kind": "plain" if self.body is not None else "stream"}
        text = self.body if self.body is not None else "\n".join(self.chunks)
        return (json.dumps(head, separators=(",", ":")) + "\n" + text).encode()

    @classmethod
    def decode(cls, raw: bytes) -> CachedAnswer | None:
        """None for what is not an entry of this shape (another version's)."""
        try:
            head_line, _, text = raw.decode().partition("\n")
            head = json.loads(head_line)
            prompt, completion, cached, written, source = head["usage"]
            usage = Usage(int(prompt), int(completion), int(cached), source, int(written))
            plain = head["kind"] == "plain"
            return cls(str(head["provider"]), head["served_model"], usage, float(head["at"]),
                       text if plain else None, () if plain or not text else tuple(text.split("\n")))
        except (ValueError, KeyError, TypeError):
            return None

    def age_s(self, now: float) -> int:
        return max(0, int(now - self.stored_at))

    def plain(self) -> bytes:
        """The plain answer: as it was given, or assembled from the stream."""
        if self.body is not None:
            return self.body.encode()
        return json.dumps(assembled(json.loads(chunk) for chunk in self.chunks)).encode()

    def stream(self, forward_usage_chunk: bool) -> list[bytes]:
        """The answer as a stream's events, then [DONE]: the chunks as they were relayed, or synthesized
        from the plain answer; the usage chunk only when the caller asked for it (stream_options)."""
        if self.body is not None:
            chunks = [json.dumps(chunk) for chunk in stream_chunks(json.loads(self.body))]
        else:
            chunks = list(self.chunks)
        events = [sse(chunk) for chunk in chunks if forward_usage_chunk or not _usage_only(chunk)]
        return [*events, DONE]


def _usage_only(chunk: str) -> bool:
    data = json.loads(chunk)
    return not data.get("choices") and data.get("usage") is not None


class AnswerKeeper:
    """Stores one call's answer once it is complete (the gateway calls it); `limit_bytes` bounds what a
    stream collects for it."""

    def __init__(self, cache: ResponseCache, plan: CachePlan) -> None:
        self.cache = cache
        self.plan = plan
        self.limit_bytes = plan.max_entry_bytes

    async def __call__(self, answer: CachedAnswer) -> None:
        """Store the answer as of now (the gateway leaves `stored_at` to the cache's clock)."""
        await self.cache.store(self.plan, replace(answer, stored_at=self.cache.now()))


Clock = Callable[[], float]


class ResponseCache:
    """Which calls the cache serves (`policies`: the models it is on for), their lookups and stores
    through the port; a store that does not answer is a bypass."""

    def __init__(self, store: ResponseCacheStore, policies: Mapping[str, ModelCachePolicy],
                 clock: Clock = time.time) -> None:
        self.entries = store
        self.policies = policies
        self.clock = clock

    def plan(self, serves: ModelServes, model: str, caller: Caller, payload: Mapping[str, Any],
             cache_control: str | None, ttl: str | None) -> CachePlan | None:
        """None when the cache is off for the model; BadCacheHeader for a header it cannot read."""
        policy = self.policies.get(model)
        if policy is None:
            return None
        asked = directives(cache_control, ttl)
        scope = scope_of(caller, policy.shared)
        key = None if scope is None else cache_key(serves, model, payload, scope, policy.routes)
        ttl_s = min(asked.ttl_s, policy.ttl_s) if asked.ttl_s is not None else policy.ttl_s
        return CachePlan(key, asked.read, asked.write, asked.max_age_s, ttl_s, policy.max_entry_bytes)

    async def lookup(self, plan: CachePlan) -> tuple[CachedAnswer | None, CacheResult]:
        """The entry the call may be answered with (hit), or none (miss; bypass when the cache is not
        used or does not answer)."""
        if plan.bypassed:
            return None, "bypass"
        if not plan.read or plan.key is None:
            return None, "miss"
        try:
            raw = await self.entries.get(plan.key)
        except CacheUnavailable:
            return None, "bypass"
        found = CachedAnswer.decode(raw) if raw is not None else None
        if found is None or (plan.max_age_s is not None and found.age_s(self.clock()) > plan.max_age_s):
            return None, "miss"
        return found, "hit"

    def keeper(self, plan: CachePlan, result: CacheResult) -> AnswerKeeper | None:
        """What stores the call's answer: none when the request said no-store, or the cache is not used."""
        return AnswerKeeper(self, plan) if plan.write and not plan.bypassed and result == "miss" else None

    async def store(self, plan: CachePlan, answer: CachedAnswer) -> None:
        """Keep the answer for the plan's TTL, unless it is larger than an entry may be."""
        assert plan.key is not None
        raw = answer.encode()
        if len(raw) <= plan.max_entry_bytes:
            try:
                await self.entries.put(plan.key, raw, plan.ttl_s)
            except CacheUnavailable:
                return

    def now(self) -> float:
        return self.clock()
