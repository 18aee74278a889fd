"""The AsyncAPI document: generated from the models, committed as docs/asyncapi.yaml, valid AsyncAPI 3.0
(the JSON schema published in @asyncapi/specs, vendored under tests/support/asyncapi), covering every
subject of the contract, with payload schemas that accept what the services send and refuse what they
refuse."""

from __future__ import annotations

import copy
import hashlib
import json
from decimal import Decimal
from pathlib import Path

import jsonschema
import pytest
import referencing
import yaml
from referencing.jsonschema import DRAFT7

from shared import subjects
from shared.asyncapi import DOCUMENT_PATH, asyncapi_document, asyncapi_yaml, main
from shared.events import Alert, BilledAttempt, LimitDecision, LimitRequest, LlmCompleted, utc_now
from shared.subjects import STREAMS, _matches

SPEC = Path(__file__).resolve().parents[2] / "support" / "asyncapi" / "asyncapi-3.0.0.schema.json"
SPEC_SHA256 = "d4571a420e6ffb7fcc7066c95a6db1202f299a3c51daa103d0706bf30f95e626"


@pytest.fixture(scope="module")
def asyncapi_validator() -> jsonschema.Draft7Validator:
    assert hashlib.sha256(SPEC.read_bytes()).hexdigest() == SPEC_SHA256, "the vendored schema was changed"
    spec = json.loads(SPEC.read_text())
    registry = referencing.Registry().with_resources(
        (uri, DRAFT7.create_resource(definition)) for uri, definition in spec["definitions"].items())
    return jsonschema.Draft7Validator(spec, registry=registry)


def test_the_committed_document_is_the_one_the_models_make():
    assert DOCUMENT_PATH.read_text() == asyncapi_yaml(), \
        "docs/asyncapi.yaml is out of date: run `python -m shared.asyncapi` and commit it"
    assert yaml.safe_load(DOCUMENT_PATH.read_text()) == asyncapi_document()


def test_the_document_is_valid_asyncapi_3(asyncapi_validator):
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
              for e in asyncapi_validator.iter_errors(asyncapi_document())]
    assert errors == []


@pytest.mark.parametrize("breakage", ["action", "address", "info", "parameter", "binding"])
def test_the_validator_refuses_a_broken_document(asyncapi_validator, breakage):
    document = copy.deepcopy(asyncapi_document())
    if breakage == "action":
        document["operations"]["consumeLlmCompleted"]["action"] = "publish"  # AsyncAPI 2's word
    elif breakage == "address":
        document["channels"]["llm.completed"]["address"] = 42
    elif breakage == "info":
        del document["info"]
    elif breakage == "parameter":
        document["channels"]["alert"]["parameters"]["source"]["enum"] = "cost"
    else:
        document["operations"]["answerLlmRequest"]["bindings"]["nats"]["queue"] = {"name": "limiter"}
    assert list(asyncapi_validator.iter_errors(document))


def test_every_subject_and_stream_of_the_contract_has_a_channel():
    addresses = {channel["address"] for channel in asyncapi_document()["channels"].values()}
    constants = {value for name, value in vars(subjects).items() if name.isupper() and isinstance(value, str)
                 and "." in value and not name.endswith("_QUEUE")}
    wanted = (constants - {subjects.ALERTS}) | {"alert.{source}.{severity}", "dlq.{subject}"}
    assert wanted <= addresses, wanted - addresses
    concrete = {address.replace("{source}", "cost").replace("{severity}", "critical").replace("{subject}", "llm.completed")
                for address in addresses if address}
    for stream in STREAMS:
        for pattern in stream.subjects:
            assert any(_matches(pattern, subject) for subject in concrete), f"{stream.name} ({pattern}) has no channel"


def test_every_reference_resolves():
    document = asyncapi_document()

    def resolve(pointer: str) -> object:
        node: object = document
        for part in pointer.removeprefix("#/").split("/"):
            assert isinstance(node, dict) and part in node, f"{pointer} does not resolve"
            node = node[part]
        return node

    def walk(node: object) -> int:
        if isinstance(node, dict):
            found = 0
            if isinstance(node.get("$ref"), str):
                resolve(node["$ref"])
                found = 1
            return found + sum(walk(value) for value in node.values())
        if isinstance(node, list):
            return sum(walk(item) for item in node)
        return 0

    assert walk(document) > 50


def payload_validator(message: str) -> jsonschema.Draft202012Validator:
    document = asyncapi_document()
    ref = document["components"]["messages"][message]["payload"]["$ref"]
    return jsonschema.Draft202012Validator({"$ref": ref, "components": document["components"]})


def test_payload_schemas_take_what_the_services_send_and_refuse_what_they_refuse():
    completed = LlmCompleted(request_id="r1", provider="openai", model="gpt-4o-mini", served_model="gpt-4o-mini-2024",
                             prompt_tokens=10, completion_tokens=5, endpoint="/v1/chat/completions", success=True,
                             latency_ms=12, tags={"feature": "search"},
                             billed_attempts=[BilledAttempt(provider="together_ai", served_model="x", prompt_tokens=10)])
    assert payload_validator("llmCompleted").is_valid(completed.model_dump(mode="json"))
    for broken in ({"prompt_tokens": -1}, {"tags": {"": "x"}}, {"request_id": None}):
        assert not payload_validator("llmCompleted").is_valid({**completed.model_dump(mode="json"), **broken})
    request = LimitRequest(request_id="r1", user_id="u", tier="free", model="gpt-4o-mini", choices=2)
    assert payload_validator("limitRequest").is_valid(request.model_dump(mode="json"))
    assert not payload_validator("limitRequest").is_valid({**request.model_dump(mode="json"), "choices": 0})
    decision = LimitDecision(allowed=True, tier="free", limit=10, remaining=9, window_s=3600, reset_at=utc_now(),
                             reserved_usd=Decimal("0.0001"))
    assert payload_validator("limitDecision").is_valid(decision.model_dump(mode="json"))
    alert = Alert(key="k", source="cost", severity="critical", title="t", text="x", threshold=Decimal("5"))
    assert payload_validator("alert").is_valid(alert.model_dump(mode="json"))


def test_llm_completed_names_its_message_id_and_its_stream():
    document = asyncapi_document()
    headers = document["components"]["messages"]["llmCompleted"]["headers"]
    assert headers["required"] == ["Nats-Msg-Id"] and "request_id" in headers["properties"]["Nats-Msg-Id"]["description"]
    assert "JetStream stream `LLM`" in document["channels"]["llm.completed"]["description"]
    assert document["operations"]["answerLlmRequest"]["bindings"]["nats"]["queue"] == subjects.LIMITER_QUEUE


def test_the_command_writes_and_checks_the_file(tmp_path, capsys):
    out = tmp_path / "asyncapi.yaml"
    assert main(["--check", "--out", str(out)]) == 1
    assert main(["--out", str(out)]) == 0 and out.read_text() == asyncapi_yaml()
    assert main(["--check", "--out", str(out)]) == 0
    out.write_text(out.read_text().replace("llm.completed", "llm.finished", 1))
    assert main(["--check", "--out", str(out)]) == 1
    assert "out of date" in capsys.readouterr().err
