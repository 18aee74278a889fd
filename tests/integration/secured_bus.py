"""A private nats-server started with `costwarden nats-config`'s output (one NKEY identity per role,
each allowed only its subjects), its streams created by `costwarden migrate` as the admin identity."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import nats

from services.deploy.nats_identities import seed_file
from shared.bus import inbox_prefix
from tests.servers import VENV_BIN, ProcessServer, free_port


class SecuredBus(NamedTuple):
    url: str
    identities: Path  # the directory of the seeds
    server: ProcessServer  # may be stopped and started again, keeping its store

    def seed(self, role: str) -> str:
        return str(seed_file(self.identities, role))


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


def start_secured_bus(base_env: dict[str, str]) -> SecuredBus:
    identities = Path(tempfile.mkdtemp(prefix="nats-identities-"))
    written = cli({}, "nats-config", "--out", str(identities))
    assert written.returncode == 0, written.stderr
    port = free_port()
    server = ProcessServer("nats-secured", [str(VENV_BIN / "nats-server"), "-c", str(identities / "auth.conf"), "-js",
                                            "-a", "127.0.0.1", "-p", str(port),
                                            "-sd", tempfile.mkdtemp(prefix="nats-secured-")], port)
    server.start()
    bus = SecuredBus(f"nats://127.0.0.1:{port}", identities, server)
    migrated = cli({**base_env, "NATS_URL": bus.url, "NATS_NKEY_SEED_FILE": bus.seed("admin")}, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    return bus


async def connect_as(bus: SecuredBus, role: str, violations: list[str] | None = None) -> nats.NATS:
    async def on_error(exc: Exception) -> None:
        if violations is not None:
            violations.append(str(exc))

    return await nats.connect(bus.url, nkeys_seed=bus.seed(role), inbox_prefix=inbox_prefix(role),
                              error_cb=on_error, max_reconnect_attempts=0)
