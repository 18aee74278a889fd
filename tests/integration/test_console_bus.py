"""The console's bus adapter on a real nats-server: it counts dead letters, refuses to request a backup
that no worker would take, and says so when NATS is gone, instead of failing the page."""

from __future__ import annotations

import nats
import pytest

from services.console.console import BackupUnavailable
from services.console.nats_bus_actions import NatsBusActions
from tests.servers import create_streams, nats_server
from tests.support.polling import eventually

pytestmark = pytest.mark.adapter


async def test_dead_letters_are_counted_and_no_worker_means_no_request():
    server, url = nats_server()
    create_streams(url)
    nc = await nats.connect(url)
    try:
        bus = NatsBusActions(nc)
        assert await bus.dead_letters() == 0
        for _ in range(3):
            await nc.jetstream().publish("dlq.llm.completed", b"{}", stream="DLQ")
        assert await bus.dead_letters() == 3
        with pytest.raises(BackupUnavailable, match="no backup worker"):
            await bus.request_backup()
        assert (await nc.jetstream().stream_info("BACKUP")).state.messages == 0  # nothing was queued
        server.stop()
        assert await eventually(lambda: not nc.is_connected, 5)
        with pytest.raises(BackupUnavailable, match="NATS is not connected"):
            await bus.request_backup()
        assert await bus.dead_letters() is None
    finally:
        await nc.close()
        server.stop()
