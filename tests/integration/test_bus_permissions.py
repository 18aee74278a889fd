"""Least privilege on the bus: a private nats-server started with `costwarden nats-config`'s output.
Every service runs under its own NKEY identity and does its whole job (gateway -> limiter -> cost ->
notifier, health, backup); each identity is refused, with a permissions violation the test sees,
what it must not do; a client without an identity cannot connect."""

from __future__ import annotations

import json

import asyncpg
import httpx
import nats
import nats.errors
import pytest

from services.deploy.nats_identities import seed_file
from shared.events import LimitDecision, LimitRequest, LlmCompleted
from tests.conftest import start_service, start_services, unique
from tests.integration.helpers import auth, chat_body, new_key
from tests.integration.secured_bus import cli, connect_as, start_secured_bus
from tests.servers import s3_server, stop_all
from tests.sinks import HttpSink
from tests.support.polling import eventually

SERVICES = ("limiter", "cost", "notifier", "health", "backup", "api")


@pytest.fixture(scope="module")
def secured_bus(base_env):
    """nats-server with the generated authorization, and the streams created by `costwarden migrate`
    as admin."""
    bus = start_secured_bus(base_env)
    yield bus
    bus.server.stop()


@pytest.fixture(scope="module")
def secured_limiter(secured_bus, base_env):
    """The limiter under its own identity on the secured bus: the one every test of the module asks."""
    limiter = start_service("limiter", {**base_env, "NATS_URL": secured_bus.url,
                                        "NATS_NKEY_SEED_FILE": secured_bus.seed("limiter")}, "LIMITER_PORT")
    yield limiter
    limiter.stop()


@pytest.mark.system
async def test_each_service_does_its_whole_job_under_its_own_identity(secured_bus, secured_limiter, base_env,
                                                                     fresh_database, tmp_path):
    url, identities, _ = secured_bus
    slack = HttpSink()
    s3, s3_env = s3_server("secured-bus")
    config = tmp_path / "costwarden.yaml"
    config.write_text(json.dumps({"thresholds": {"hourly": {"warning": "0.000001"}}}))
    env = {**base_env, **s3_env, "NATS_URL": url, "DATABASE_URL": fresh_database, "COSTWARDEN_CONFIG": str(config),
           "SLACK_WEBHOOK_URL": f"{slack.url}/slack/T0/B0/secured",
           "NOTIFY_GROUP_WINDOW_S": "0.1"}  # the alert to Slack at once, not after 2 s of waiting for others
    migrated = cli({**env, "NATS_NKEY_SEED_FILE": str(seed_file(identities, "admin"))}, "migrate")
    assert migrated.returncode == 0, migrated.stderr  # the fresh database's tables
    services = []
    try:
        services = start_services(*[(name, {**env, "NATS_NKEY_SEED_FILE": str(seed_file(identities, name))},
                                     f"{name.upper()}_PORT") for name in SERVICES if name != "limiter"])
        api = services[-1]
        key = await new_key(fresh_database, unique("secure"), "pro")
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
            answer = await client.post("/v1/chat/completions", json=chat_body(), headers=auth(key))
            assert answer.status_code == 200, answer.text  # api asked the limiter, called the provider
            request_id = answer.headers["x-request-id"]
        db = await asyncpg.connect(fresh_database)
        try:
            assert await eventually(lambda: db.fetchval("SELECT count(*) FROM llm_usage WHERE request_id = $1",
                                                        request_id), 30), "cost did not record the call"
            assert await eventually(lambda: slack.delivered("/slack"), 30), "the cost alert never reached Slack"
            backup = cli({**env, "NATS_NKEY_SEED_FILE": str(seed_file(identities, "admin"))},
                         "backup", "run", "--wait", "--timeout", "90")
            assert backup.returncode == 0, backup.stderr
        finally:
            await db.close()
        health = next(service for service in services if service.name == "health")

        async def health_sees_the_bus_and_its_consumers() -> bool:
            nats_check = httpx.get(f"{health.url}/health").json()["dependencies"].get("nats", {})
            metrics = httpx.get(f"{health.url}/metrics").text
            return nats_check.get("status") == "healthy" and 'consumer="cost-ledger"' in metrics

        assert await eventually(health_sees_the_bus_and_its_consumers, 30)
        upstream, admin = await connect_as(secured_bus, "upstream"), await connect_as(secured_bus, "admin")
        try:
            await upstream.jetstream().publish("llm.completed", b"{not json")

            async def dead_lettered_by_limiter_and_cost() -> bool:
                return (await admin.jetstream().stream_info("DLQ")).state.messages >= 2

            assert await eventually(dead_lettered_by_limiter_and_cost, 30)
        finally:
            await upstream.close()
            await admin.close()
        for service in (secured_limiter, *services):
            assert "permissions violation" not in service.logs().lower(), service.name
    finally:
        stop_all(services)
        slack.stop()
        s3.stop()


@pytest.mark.service
async def test_an_upstream_service_asks_the_limiter_and_reports_completions(secured_bus, secured_limiter):
    upstream = await connect_as(secured_bus, "upstream")
    try:
        request = LimitRequest(request_id=unique("up"), user_id=unique("up"), tier="pro", model="gpt-4o-mini")
        reply = await upstream.request("llm.request", request.model_dump_json().encode(), timeout=10)
        assert LimitDecision.model_validate_json(reply.data).allowed  # the answer came to its own inbox
        completed = LlmCompleted(request_id=request.request_id, provider="together_ai", model="gpt-4o-mini",
                                 endpoint="/v1/chat/completions", prompt_tokens=5, completion_tokens=5, success=True,
                                 latency_ms=3)
        ack = await upstream.jetstream().publish("llm.completed", completed.model_dump_json().encode())
        assert ack.stream == "LLM"
    finally:
        await upstream.close()


@pytest.mark.adapter
@pytest.mark.parametrize(("role", "what"), [
    ("upstream", "publish alert.cost.critical"),
    ("upstream", "publish backup.requested"),
    ("cost", "publish llm.request"),
    ("api", "publish $JS.API.STREAM.DELETE.LLM"),
    ("backup", "publish $JS.API.STREAM.DELETE.LLM"),
    ("notifier", "publish $JS.API.CONSUMER.DELETE.LLM.cost-ledger"),
    ("upstream", "subscribe _INBOX_api.>"),
    ("limiter", "subscribe _INBOX_cost.>"),
    ("health", "subscribe alert.>"),
    ("console", "publish llm.completed"),
    ("console", "publish $JS.API.STREAM.MSG.GET.DLQ"),  # it counts dead letters, it does not read them
    ("console", "subscribe alert.>"),
])
async def test_an_identity_is_refused_what_it_must_not_do(secured_bus, role, what):
    violations: list[str] = []
    nc = await connect_as(secured_bus, role, violations)
    try:
        action, subject = what.split(" ")
        if action == "publish":
            await nc.publish(subject, b"{}")
        else:
            await nc.subscribe(subject)
        await nc.flush()
        assert await eventually(lambda: violations, 5), f"{role} was allowed to {what}"
        kind = "publish" if action == "publish" else "subscription"
        assert f'permissions violation for {kind} to "{subject}"'.lower() in violations[0].lower()
    finally:
        await nc.close()
    admin = await connect_as(secured_bus, "admin")
    try:
        assert (await admin.jetstream().stream_info("LLM")).config.name == "LLM"  # still there
    finally:
        await admin.close()


@pytest.mark.adapter
async def test_a_client_without_an_identity_cannot_connect(secured_bus):
    url = secured_bus.url

    async def quiet(exc: Exception) -> None: ...

    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(url, max_reconnect_attempts=0, allow_reconnect=False, connect_timeout=2, error_cb=quiet)
