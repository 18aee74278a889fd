"""The cost service, asked over core NATS request-reply on `cost.query` (any cost replica answers):
the CostQueries port of shared/cost_query.py."""

from __future__ import annotations

import json

import nats.errors
from nats.aio.client import Client as Nats

from shared.cost_query import Analytics, CostQuery, CostQueryRefused, CostServiceUnavailable, CurrentCost
from shared.subjects import COST_QUERY


class NatsCostQueries:
    def __init__(self, nc: Nats, timeout_s: float) -> None:
        self.nc = nc
        self.timeout_s = timeout_s

    async def answer(self, query: CostQuery) -> CurrentCost | Analytics:
        try:
            reply = await self.nc.request(COST_QUERY, query.model_dump_json().encode(), timeout=self.timeout_s)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            raise CostServiceUnavailable("the cost service did not answer") from exc
        body = json.loads(reply.data)
        if "error" in body:
            raise CostQueryRefused(body.get("reason") or body["error"])
        answer = CurrentCost if query.kind == "current" else Analytics
        return answer.model_validate(body)
