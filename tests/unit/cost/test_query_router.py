"""The `cost.query` handler alone, on FastStream's in-memory broker, with a fake read side."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from faststream.nats import NatsBroker, TestNatsBroker

from services.cost.query_router import query_router
from shared.cost_query import Analytics, CostQuery, CurrentCost

AS_OF = datetime(2026, 11, 28, 10, 30, tzinfo=UTC)


class FakeQueries:
    def __init__(self) -> None:
        self.asked: list[CostQuery] = []

    async def answer(self, query: CostQuery) -> CurrentCost | Analytics:
        self.asked.append(query)
        return CurrentCost(user_id=query.user_id, hourly=Decimal("1.25"), daily=Decimal("10.5"),
                           monthly=Decimal("100.000001"), as_of=AS_OF)


async def test_a_query_is_answered_with_money_as_decimal_strings():
    fake = FakeQueries()
    broker = NatsBroker()
    broker.include_router(query_router(lambda: fake))
    async with TestNatsBroker(broker) as broker:
        reply = await broker.request(CostQuery(kind="current", user_id="ann").model_dump(mode="json"), "cost.query")
        body = await reply.decode()
    assert body == {"user_id": "ann", "api_key_id": None, "hourly": "1.25", "daily": "10.5", "monthly": "100.000001",
                    "as_of": "2026-11-28T10:30:00Z"}
    assert [q.user_id for q in fake.asked] == ["ann"]
    assert CurrentCost.model_validate(body).monthly == Decimal("100.000001")
