"""`costwarden config check [FILE]`: the YAML file validated as every service reads it, each mistake
with its file position and field, in the words the service that reads it refuses to start with (an
unknown provider in a route, a key variable that is not set, a weight of 0 or less, a model without a
price, which is a warning: its calls are billed at the fallback price). Also warns of top-level keys
that no service reads (a typo such as `modles:` would otherwise leave the defaults in place)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from services.api.settings import ApiConfig
from services.console.settings import ConsoleConfig
from services.cost.settings import CostConfig
from services.health.settings import HealthConfig
from services.limiter.settings import LimiterConfig
from services.notifier.settings import NotifierConfig
from shared.config_file import ConfigDocument, ConfigError, Problem

PARTS: tuple[type[BaseModel], ...] = (ApiConfig, LimiterConfig, CostConfig, NotifierConfig, HealthConfig,
                                      ConsoleConfig)


def check(path: Path) -> tuple[list[str], int]:
    """The messages for the file (errors first, in file order) and how many are errors."""
    try:
        document = ConfigDocument.read(path)
    except ConfigError as exc:
        return exc.lines, len(exc.lines)
    problems: dict[str, Problem] = {}
    for part in PARTS:
        for problem in document.validate(part)[1]:
            problems.setdefault(document.describe(problem), problem)
    read = {name for part in PARTS for name in part.model_fields}
    for key in document.data:
        if key not in read:
            problem = Problem((str(key),), "no service reads this key", "warning")
            problems.setdefault(document.describe(problem), problem)
    ordered = sorted(problems.items(),
                     key=lambda item: (item[1].severity != "error", document.line_column(item[1].location)))
    return [line for line, _ in ordered], sum(p.severity == "error" for p in problems.values())
