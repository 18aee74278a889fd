"""`cost.query` (request-reply, queue group `cost`: any replica answers) as a FastStream router over
the read side of the ledger."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from faststream.nats import NatsRouter

from shared.cost_query import CostQueries, CostQuery
from shared.subjects import COST_QUERY, COST_QUEUE


def query_router(queries: Callable[[], CostQueries]) -> NatsRouter:
    """`queries` is called per request: the read side exists only once the service has connected."""
    router = NatsRouter()

    @router.subscriber(COST_QUERY, queue=COST_QUEUE, title="cost.query",
                       description="Current spend or analytics for a time range (request-reply).")
    async def answer_query(query: CostQuery) -> dict[str, Any]:
        return (await queries().answer(query)).model_dump(mode="json")

    return router
