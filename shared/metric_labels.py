"""Label values that cannot grow a metric's series without bound."""

from __future__ import annotations

OTHER = "other"


class BoundedLabel:
    """The first `limit` distinct values of a label pass as they are; any later one becomes `other`.

    Some label values are chosen by callers (a model name, an endpoint, a tier another service sends):
    without a bound, a caller could create series until Prometheus runs out of memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, value: str | None) -> str:
        if value is None or value == "":
            return "none"
        if value in self.seen:
            return value
        if len(self.seen) < self.limit:
            self.seen.add(value)
            return value
        return OTHER
