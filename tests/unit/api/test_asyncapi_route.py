"""The api serves the bus's AsyncAPI document, the one committed as docs/asyncapi.yaml."""

from __future__ import annotations

import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.api.http.asyncapi import router
from shared.asyncapi import DOCUMENT_PATH


def test_the_api_serves_the_committed_asyncapi_document_as_json():
    app = FastAPI()
    app.include_router(router)
    answer = TestClient(app).get("/asyncapi.json")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    assert answer.json() == yaml.safe_load(DOCUMENT_PATH.read_text())
