"""What the cost service reads: its port, and its part of the YAML file (the prices it records at, the
thresholds it alerts on, how long the ledger keeps its rows)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import PricesPart, ServiceSettings, ThresholdsPart


class CostConfig(PricesPart, ThresholdsPart):
    retention_days: int = Field(default=90, gt=0)


class CostSettings(ServiceSettings):
    cost_port: int = 3003

    def file_config(self) -> CostConfig:
        return self.file_part(CostConfig)
