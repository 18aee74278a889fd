"""The `nats` CLI example's two bodies are valid messages of the contract, and its record carries the
request id as Nats-Msg-Id (the Python examples run against the real services in
tests/integration/test_upstream_client.py)."""

from __future__ import annotations

import re
from pathlib import Path

from shared.events import LimitRequest, LlmCompleted

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_cli_examples_bodies_are_contract_messages_with_one_request_id():
    request = LimitRequest.model_validate_json((EXAMPLES / "llm_request.json").read_text().replace("REQUEST_ID", "r1"))
    completed = LlmCompleted.model_validate_json(
        (EXAMPLES / "llm_completed.json").read_text().replace("REQUEST_ID", "r1"))
    assert request.request_id == completed.request_id == completed.id == "r1"
    assert (completed.user_id, completed.tier, completed.model) == (request.user_id, request.tier, request.model)
    script = (EXAMPLES / "nats_cli.sh").read_text()
    assert re.search(r'req llm\.request .*llm_request\.json', script)
    assert re.search(r'req llm\.completed .*llm_completed\.json.*-H "Nats-Msg-Id:\$id"', script)
    assert "--inbox-prefix _INBOX_upstream" in script
