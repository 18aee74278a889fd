"""Spend for Prometheus, kept as Decimal: the exact sum of the ledger's costs per model, provider, served
model, endpoint and tier, and the configured thresholds the alert rules compare it with. The text
format writes them as numbers when scraped; nothing is summed in floating point."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

from shared.policy import Thresholds

SPEND_LABELS = ["model", "provider", "served_model", "endpoint", "tier"]
SpendLabels = tuple[str, str, str, str, str]


class SpendCollector(Collector):
    def __init__(self) -> None:
        self.usd: defaultdict[SpendLabels, Decimal] = defaultdict(Decimal)
        self.saved: defaultdict[str, Decimal] = defaultdict(Decimal)
        self.thresholds: dict[tuple[str, str], Decimal] = {}

    def add(self, labels: SpendLabels, usd: Decimal) -> None:
        self.usd[labels] += usd

    def add_saved(self, model: str, usd: Decimal) -> None:
        self.saved[model] += usd

    def set_thresholds(self, thresholds: Thresholds) -> None:
        self.thresholds = {(period, severity): usd for period in ("hour", "day", "month")
                           for severity, usd in (("warning", thresholds.for_period(period).warning),
                                                 ("critical", thresholds.for_period(period).critical))
                           if usd is not None}

    def collect(self) -> Iterator[Metric]:
        # Samples are typed float; the exposition formats any number, and a Decimal stays exact until then.
        spend = CounterMetricFamily("costwarden_spend_usd", "Spend recorded in the ledger, in USD "
                                    "(committed batches only)", labels=SPEND_LABELS)
        for labels, usd in list(self.usd.items()):
            spend.add_metric(labels, usd)  # type: ignore[arg-type]
        yield spend
        saved = CounterMetricFamily("costwarden_cost_cache_saved_usd", "What calls answered from the gateway's "
                                    "response cache would have cost, in USD, by public model", labels=["model"])
        for model, usd in list(self.saved.items()):
            saved.add_metric([model], usd)  # type: ignore[arg-type]
        yield saved
        threshold = GaugeMetricFamily("costwarden_cost_alert_threshold_usd",
                                      "Configured spend thresholds, for alert rules", labels=["period", "severity"])
        for (period, severity), usd in self.thresholds.items():
            threshold.add_metric([period, severity], usd)  # type: ignore[arg-type]
        yield threshold


SPEND = SpendCollector()
REGISTRY.register(SPEND)
