"""The console on the bus, as its own NATS identity: it may read the dead-letter stream's size and the
backup worker's consumer, and publish a backup request; nothing else."""

from __future__ import annotations

import nats.errors
from nats.aio.client import Client as Nats

from services.console.console import BackupUnavailable
from shared.backup_requests import backup_worker_listening
from shared.bus import publish_event
from shared.events import BackupRequested
from shared.subjects import BACKUP_REQUESTED, LLM_COMPLETED, dead_letter_subject, stream_of

WORKER_PATIENCE_S = 2.0


class NatsBusActions:
    def __init__(self, nc: Nats) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=2)

    async def dead_letters(self) -> int | None:
        """Messages kept in the dead-letter stream now (it keeps them 30 days); None if NATS does not answer."""
        if not self.nc.is_connected:
            return None
        try:
            info = await self.js.stream_info(stream_of(dead_letter_subject(LLM_COMPLETED)))
        except (nats.errors.Error, OSError):
            return None
        return int(info.state.messages)

    async def request_backup(self) -> str:
        request = BackupRequested()
        if not self.nc.is_connected:
            raise BackupUnavailable("NATS is not connected; nothing was requested")
        try:
            if not await backup_worker_listening(self.js, WORKER_PATIENCE_S):
                raise BackupUnavailable("no backup worker is running (the backup service takes requests); "
                                        "nothing was requested")
            await publish_event(self.js, BACKUP_REQUESTED, request, request.id)
        except (nats.errors.Error, OSError) as exc:
            raise BackupUnavailable(f"NATS did not answer ({type(exc).__name__}); nothing was requested") from None
        return request.id
