"""The response cache's rules: which models are cached, the key (what changes it and what does not, the
caller's scope), the request headers, entries as stored and replayed (a plain answer as a stream and a
stream as a plain answer), and the use case over a store that answers, forgets or is down."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.api.callers import ANONYMOUS, Caller
from services.api.response_cache import (
    BadCacheHeader,
    CachedAnswer,
    Directives,
    ModelCachePolicy,
    ResponseCache,
    assembled,
    cache_key,
    cache_policies,
    directives,
    routes_digest,
    scope_of,
    stream_chunks,
)
from services.api.usage import Usage
from shared.policy import CacheConfig, ModelCache, ModelConfig, ModelRoute
from tests.unit.api.fakes import MemoryStore

ROUTE = [ModelRoute(provider="openai", model="gpt-4o-mini")]
ANN = Caller("ann", "pro", key_id=1)
BEN_IN_RED = Caller("ben", "pro", key_id=2, team_id="red")
CAT_IN_RED = Caller("cat", "pro", key_id=3, team_id="red")
USAGE = Usage(12, 3, source="provider")


def model(cache: ModelCache | None = None) -> ModelConfig:
    return ModelConfig(routes=ROUTE, cache=cache)


def test_a_models_own_cache_settings_win_over_the_global_ones_and_the_cache_is_off_by_default():
    models = {"plain": model(), "on": model(ModelCache(enabled=True, ttl_s=60)), "off": model(ModelCache(enabled=False)),
              "shared": model(ModelCache(shared=True))}
    routes = routes_digest(ROUTE)
    assert cache_policies(CacheConfig(), models) == {"on": ModelCachePolicy(60, False, 1_048_576, routes)}
    assert cache_policies(CacheConfig(enabled=True, ttl_s=10, max_entry_bytes=100), models) == {
        "plain": ModelCachePolicy(10, False, 100, routes), "on": ModelCachePolicy(60, False, 100, routes),
        "shared": ModelCachePolicy(10, True, 100, routes)}


def test_re_pointing_a_model_keys_its_answers_afresh_and_re_weighting_it_does_not():
    def key_with(*routes: ModelRoute) -> str | None:
        policies = cache_policies(CacheConfig(enabled=True), {"m": ModelConfig(routes=list(routes))})
        plan = ResponseCache(MemoryStore(), policies).plan("chat", "m", ANN, BODY, None, None)
        return plan.key if plan else None

    together = ModelRoute(provider="together_ai", model="meta-llama/Llama-3-8b-chat-hf")
    keys = [key_with(*ROUTE), key_with(together), key_with(*ROUTE, together), key_with(together, *ROUTE)]
    assert len(set(keys)) == len(keys)
    assert key_with(ROUTE[0].model_copy(update={"weight": 3.0})) == keys[0]


@pytest.mark.parametrize(("cache_control", "ttl", "expected"), [
    (None, None, Directives()),
    ("no-store", None, Directives(read=False, write=False)),
    ("No-Cache", "30", Directives(read=False, ttl_s=30)),
    ("private, max-age=0", None, Directives(max_age_s=0)),
    ('max-age="120", no-transform', None, Directives(max_age_s=120)),
    ("max-age=" + "9" * 5000, "9" * 5000, Directives(max_age_s=2**31, ttl_s=2**31)),  # RFC 9111 §1.2.2
    ("max-age=99999999999", "2147483649", Directives(max_age_s=2**31, ttl_s=2**31)),
])
def test_what_the_request_headers_ask(cache_control, ttl, expected):
    assert directives(cache_control, ttl) == expected


@pytest.mark.parametrize(("cache_control", "ttl", "header"), [
    ("max-age=-1", None, "Cache-Control"), ("max-age", None, "Cache-Control"), ("max-age=soon", None, "Cache-Control"),
    (None, "0", "X-Costwarden-Cache-TTL"), (None, "1.5", "X-Costwarden-Cache-TTL"), (None, "", "X-Costwarden-Cache-TTL"),
    ("max-age=\u00b2", None, "Cache-Control"), (None, "\u00b3", "X-Costwarden-Cache-TTL"),  # Latin-1 superscripts
    ("max-age=\u0661", None, "Cache-Control"), (None, "0" * 5000, "X-Costwarden-Cache-TTL"),
])
def test_a_header_that_cannot_be_read_is_named(cache_control, ttl, header):
    with pytest.raises(BadCacheHeader) as refused:
        directives(cache_control, ttl)
    assert refused.value.header == header


def test_the_scope_is_the_team_else_the_user_and_anonymous_callers_share_only_shared_models():
    assert (scope_of(ANN, False), scope_of(BEN_IN_RED, False), scope_of(ANONYMOUS, False)) == ("user:ann", "team:red",
                                                                                               None)
    assert scope_of(ANONYMOUS, True) == scope_of(ANN, True) == "*"


BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 0.2}


def test_the_key_ignores_how_an_answer_is_delivered_and_keeps_what_changes_it():
    key = cache_key("chat", "m", BODY, "user:ann", "r")
    assert key.startswith("cwapi:cache:") and len(key) == len("cwapi:cache:") + 64
    same = {**dict(reversed(BODY.items())), "stream": True, "stream_options": {"include_usage": True}, "user": "x"}
    assert cache_key("chat", "m", same, "user:ann", "r") == key
    changed = [cache_key("chat", "m", {**BODY, "temperature": 0.3}, "user:ann", "r"),
               cache_key("chat", "m", {**BODY, "max_tokens": 9}, "user:ann", "r"),
               cache_key("chat", "other", BODY, "user:ann", "r"), cache_key("chat", "m", BODY, "team:red", "r"),
               cache_key("embeddings", "m", BODY, "user:ann", "r"),
               cache_key("chat", "m", {**BODY, "seed": 1}, "user:ann", "r"),
               cache_key("chat", "m", BODY, "user:ann", "other routes")]
    assert key not in changed and len(set(changed)) == len(changed)


texts = st.text(alphabet=string.printable + "éß漢🙂", max_size=40)


def token_logprobs(text: str) -> list[dict]:
    return [{"token": text, "logprob": -0.25, "bytes": list(text.encode()), "top_logprobs": []}]


logprobs = st.one_of(st.none(), st.builds(lambda text: {"content": token_logprobs(text), "refusal": None}, texts))
no_logprobs = object()


@given(st.lists(st.tuples(texts, st.one_of(st.just(no_logprobs), logprobs)), min_size=1, max_size=3),
       st.sampled_from(["stop", "length"]))
def test_a_plain_answer_replayed_as_a_stream_assembles_back_to_itself(contents, finish):
    choices = []
    for i, (text, choice_logprobs) in enumerate(contents):
        choice = {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        if choice_logprobs is not no_logprobs:
            choice["logprobs"] = choice_logprobs
        choices.append(choice)
    body = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m", "choices": choices,
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}
    assert assembled(stream_chunks(body)) == body


@given(st.lists(texts, min_size=1, max_size=8))
def test_a_stream_is_assembled_into_the_plain_answer_it_makes(deltas):
    base = {"id": "c", "object": "chat.completion.chunk", "created": 2, "model": "m"}
    chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                    "finish_reason": None}]},
              *({**base, "choices": [{"index": 0, "delta": {"content": d}, "finish_reason": None,
                                      "logprobs": {"content": token_logprobs(d), "refusal": None}}]} for d in deltas),
              {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
              {**base, "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": len(deltas)}}]
    answer = assembled(chunks)
    joined = {"content": [entry for d in deltas for entry in token_logprobs(d)], "refusal": None}
    assert answer["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "".join(deltas)},
                                  "logprobs": joined, "finish_reason": "stop"}]
    assert answer["usage"]["completion_tokens"] == len(deltas) and answer["object"] == "chat.completion"


def test_tool_calls_are_joined_from_their_deltas_and_split_again():
    base = {"id": "c", "created": 2, "model": "m"}
    chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [
                  {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_", "arguments": ""}}]}}]},
              {**base, "choices": [{"index": 0, "delta": {"tool_calls": [
                  {"index": 0, "function": {"name": "weather", "arguments": '{"city":'}}]}}]},
              {**base, "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]},
                                    "finish_reason": "tool_calls"}]}]
    answer = assembled(chunks)
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
    assert answer["choices"][0]["message"] == {"role": "assistant", "tool_calls": [call]}
    assert assembled(stream_chunks(answer))["choices"] == answer["choices"]


@given(st.lists(texts, max_size=5), texts, st.floats(min_value=0, max_value=2e9))
def test_an_entry_reads_back_as_it_was_stored(chunks, body, at):
    data = [json.dumps({"choices": [{"index": 0, "delta": {"content": c}}]}) for c in chunks]
    for answer in (CachedAnswer("openai", "gpt-4o-mini", USAGE, at, body=json.dumps({"text": body})),
                   CachedAnswer("together_ai", None, Usage(1, 2, 3, "estimated", 1), at, chunks=tuple(data))):
        assert CachedAnswer.decode(answer.encode()) == answer


def test_what_is_not_an_entry_reads_as_none():
    assert CachedAnswer.decode(b"not an entry") is None and CachedAnswer.decode(b'{"provider": 1}\n{}') is None


def plain_entry(at: float = 100.0) -> CachedAnswer:
    body = {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}}
    return CachedAnswer("openai", "gpt-4o-mini", USAGE, at, body=json.dumps(body))


def test_a_replayed_stream_ends_with_done_and_carries_the_usage_only_when_asked():
    events = plain_entry().stream(forward_usage_chunk=False)
    assert events[-1] == b"data: [DONE]\n\n" and all(e.startswith(b"data: ") for e in events)
    with_usage = plain_entry().stream(forward_usage_chunk=True)
    assert len(with_usage) == len(events) + 1 and b'"usage"' in with_usage[-2]


def cache_at(store: MemoryStore, now: list[float], **policy: int) -> ResponseCache:
    settings = {"ttl_s": 600, "max_entry_bytes": 10_000, **policy}
    return ResponseCache(store, {"m": ModelCachePolicy(settings["ttl_s"], False, settings["max_entry_bytes"])},
                         clock=lambda: now[0])


async def test_a_miss_keeps_the_answer_a_hit_gives_it_back_with_its_age_and_max_age_refuses_an_older_one():
    store, now = MemoryStore(), [1000.0]
    cache = cache_at(store, now)
    assert cache.plan("chat", "other", ANN, BODY, None, None) is None  # the cache is off for that model
    plan = cache.plan("chat", "m", ANN, BODY, None, "60")
    assert plan is not None and plan.ttl_s == 60
    found, result = await cache.lookup(plan)
    keeper = cache.keeper(plan, result)
    assert (found, result) == (None, "miss") and keeper is not None
    await keeper(plain_entry(at=0.0))
    assert [ttl for _, ttl in store.entries.values()] == [60]
    now[0] += 30
    found, result = await cache.lookup(plan)
    assert result == "hit" and found is not None and found.age_s(now[0]) == 30 and cache.keeper(plan, result) is None
    older = cache.plan("chat", "m", ANN, BODY, "max-age=29", None)
    assert older is not None and (await cache.lookup(older))[1] == "miss"
    teammate = cache.plan("chat", "m", BEN_IN_RED, BODY, None, None)
    assert teammate is not None and (await cache.lookup(teammate))[1] == "miss"


async def test_a_ttl_asked_for_is_bounded_by_the_models_and_an_entry_too_large_is_not_kept():
    store, now = MemoryStore(), [0.0]
    cache = cache_at(store, now, ttl_s=100, max_entry_bytes=200)
    plan = cache.plan("chat", "m", BEN_IN_RED, BODY, None, "100000")
    assert plan is not None and plan.ttl_s == 100
    await cache.store(plan, plain_entry())  # its JSON alone is more than 200 bytes
    assert store.entries == {}
    same_team = cache.plan("chat", "m", CAT_IN_RED, BODY, None, None)
    assert same_team is not None and same_team.key == plan.key


async def test_no_store_anonymous_callers_and_a_store_that_is_down_are_bypassed_never_an_error():
    store, now = MemoryStore(), [0.0]
    cache = cache_at(store, now)
    for plan in (cache.plan("chat", "m", ANN, BODY, "no-store", None), cache.plan("chat", "m", ANONYMOUS, BODY, None,
                                                                                  None)):
        assert plan is not None and await cache.lookup(plan) == (None, "bypass") and cache.keeper(plan, "bypass") is None
    fresh = cache.plan("chat", "m", ANN, BODY, "no-cache", None)
    assert fresh is not None and await cache.lookup(fresh) == (None, "miss") and cache.keeper(fresh, "miss")
    store.down = True
    plan = cache.plan("chat", "m", ANN, BODY, None, None)
    assert plan is not None and await cache.lookup(plan) == (None, "bypass")
    await cache.store(plan, plain_entry())  # nothing raised
