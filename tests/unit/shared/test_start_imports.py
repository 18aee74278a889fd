"""What a service imports to start, in a fresh interpreter as its process does: not the libraries it
does not use at start (each costs CPU at every start of every replica)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

# The app built as uvicorn builds it (services/<name>/__main__.py), then what was imported, and whether
# FastStream's own logger was taken over (no handler of its own: its lines go through ours).
BUILD_APP = """
import importlib, json, logging, sys
name = sys.argv[1]
module = importlib.import_module(f"services.{name}.app")
settings = getattr(importlib.import_module(f"services.{name}.settings"), f"{name.capitalize()}Settings")(
    _env_file=None, costwarden_config=None)
module.create_app(settings)
if name == "api":  # its Redis adapters without a cached model or a deployment's ceiling
    assert module.redis_adapters(settings, {}, False) == ([], None, None)
faststream_logger = logging.getLogger("faststream")
print(json.dumps({"modules": sorted(sys.modules),
                  "faststream_taken_over": not faststream_logger.handlers and faststream_logger.propagate}))
"""


def started(service: str) -> dict:
    env = {"PATH": "/usr/bin:/bin", "LOG_FORMAT": "json"}
    run = subprocess.run([sys.executable, "-c", BUILD_APP, service], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.splitlines()[-1])


def test_the_api_starts_without_faststream_the_asyncapi_models_nor_redis_when_no_cache_or_ceiling_asks_for_it():
    imported = set(started("api")["modules"])
    assert "fastapi" in imported and "tiktoken" in imported  # what it does use
    unused_at_start = imported & {"faststream", "redis", "shared.asyncapi", "boto3"}
    assert not unused_at_start


def test_a_bus_service_starts_without_fastapi_the_asyncapi_models_nor_boto3_and_takes_faststreams_logger_over():
    backup = started("backup")
    imported = set(backup["modules"])
    assert "faststream" in imported and "croniter" in imported  # what it does use
    unused_at_start = imported & {"fastapi", "starlette", "pydantic.v1", "shared.asyncapi", "boto3"}
    assert not unused_at_start
    assert backup["faststream_taken_over"]
