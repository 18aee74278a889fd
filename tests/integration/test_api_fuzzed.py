"""schemathesis against the gateway's own OpenAPI document: generated requests, valid and not, with a
fixed example budget per operation. No answer is a 5xx, and every answer matches the document."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from tests.conftest import unique

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def enterprise_key(database_url) -> str:
    """A key with room for every generated request (1,000 an hour)."""
    made = subprocess.run([sys.executable, "-m", "services.cli", "keys", "create", "--user", unique("fuzz"),
                           "--tier", "enterprise"], capture_output=True, text=True, check=True,
                          env={**os.environ, "DATABASE_URL": database_url})
    return made.stdout.strip().splitlines()[-1]


def test_the_gateway_answers_generated_requests_as_documented(gateway, cost_service, enterprise_key):
    """Each operation of the document in turn (schemathesis' pytest loader does not run on pytest 9, so
    its Python API drives hypothesis directly)."""
    schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
        def answers_as_documented(case) -> None:
            response = case.call(headers={"Authorization": f"Bearer {enterprise_key}"}, timeout=30)
            case.validate_response(response, checks=(not_a_server_error, response_schema_conformance,
                                                     content_type_conformance))

        answers_as_documented()
