"""Asking for a backup on the bus (`backup.requested`), as the console and `costwarden backup run` do:
the durable consumer a backup worker pulls requests from, and whether one is listening now."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import nats.js.errors
from nats.js import JetStreamContext

from shared.subjects import BACKUP_REQUESTED, JETSTREAM_BUSY, stream_of

WORKER_DURABLE = "backup-requests"


async def backup_worker_listening(js: JetStreamContext, patience_s: float, interval_s: float = 0.5,
                                  on_wait: Callable[[float], None] | None = None) -> bool:
    """Whether a backup worker consumes `backup.requested`: a running worker keeps a pull request waiting
    on the durable consumer WORKER_DURABLE, or holds a request it is working on. Asked for up to
    `patience_s` (a worker that just failed a pull waits up to batch_consumer.MAX_BACKOFF_S before it
    asks again); `on_wait` hears once that it takes a while."""
    checks = max(int(patience_s / interval_s), 1)
    for attempt in range(checks):
        try:
            info = await js.consumer_info(stream_of(BACKUP_REQUESTED), WORKER_DURABLE)
        except nats.js.errors.NotFoundError:
            return False
        except JETSTREAM_BUSY:  # a cluster electing leaders answers nothing for a moment: ask again
            info = None
        if info is not None and ((info.num_waiting or 0) > 0 or (info.num_ack_pending or 0) > 0):
            return True
        if attempt == 2 and on_wait is not None:
            on_wait(patience_s)
        if attempt < checks - 1:
            await asyncio.sleep(interval_s)
    return False
