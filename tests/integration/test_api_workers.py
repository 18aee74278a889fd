"""API_WORKERS: the gateway under several uvicorn worker processes, its metrics added up across them."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest

from tests.conftest import start_service, unique
from tests.integration.helpers import auth, chat_body, new_key
from tests.support.polling import eventually

pytestmark = pytest.mark.service


def worker_pids(pid: int) -> list[int]:
    """The api's worker processes: uvicorn's supervisor spawns them (beside multiprocessing's tracker)."""
    children = [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
                for child in (task / "children").read_text().split()]
    return [child for child in children if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


async def test_two_workers_share_the_calls_and_report_them_together(base_env, limiter, database_url, tmp_path):
    api = start_service("api", {**base_env, "API_WORKERS": "2", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
                        "API_PORT")
    try:
        workers = await eventually(lambda: asyncio.sleep(0, len(worker_pids(api.process.pid)) == 2), 20)
        assert workers, f"expected 2 workers, found {worker_pids(api.process.pid)}"
        key = await new_key(database_url, unique("workers"), "enterprise")
        pids = set(worker_pids(api.process.pid))

        def served() -> set[int]:
            return {int(path.stem.rsplit("_", 1)[1]) for path in tmp_path.glob("histogram_*.db")} & pids

        async with httpx.AsyncClient(base_url=api.url, timeout=30, headers=auth(key),
                                     limits=httpx.Limits(max_keepalive_connections=0)) as client:
            sent = 0
            while served() != pids and sent < 400:  # the kernel hands connections to either worker, not in turn
                responses = await asyncio.gather(*(client.post("/v1/chat/completions", json=chat_body())
                                                   for _ in range(20)))
                assert {r.status_code for r in responses} == {200}
                sent += len(responses)
            assert served() == pids, "both workers served calls and kept their metrics"
            counts = []
            for _ in range(6):  # each scrape may be answered by either worker: each must see every call
                text = (await client.get("/metrics")).text
                [count] = re.findall(r'costwarden_api_request_seconds_count\{route="/v1/chat/completions",'
                                     r'status="200"\} (\S+)', text)
                counts.append(float(count))
        assert counts == [float(sent)] * 6
    finally:
        assert api.stop() == 0
