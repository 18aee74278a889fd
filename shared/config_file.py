"""The YAML file (COSTWARDEN_CONFIG) read with the position of every node, so that a mistake is
reported where it is: `costwarden.yaml:12:19: error: models.gpt-4o.routes[1].provider: unknown
provider 'groq' (...)`. Every service that reads a part of the file, and `costwarden config check`,
report a mistake with the same message; a service refuses to start on an error and logs a warning.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

log = logging.getLogger(__name__)

Location = tuple[str | int, ...]
Part = TypeVar("Part", bound=BaseModel)
PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class Problem:
    location: Location
    message: str
    severity: Literal["error", "warning"] = "error"


class ConfigError(ValueError):
    """An invalid configuration: one line per error, each with the file position and the field."""

    def __init__(self, lines: Sequence[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = list(lines)


def dotted(location: Location) -> str:
    """models.gpt-4o.routes[1].provider; a key that is not a plain word is quoted."""
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = part if PLAIN_KEY.match(part) else f'"{part}"'
            text += f".{name}" if text else name
    return text


def _marks(node: yaml.Node, where: Location, marks: dict[Location, yaml.Mark], mark: yaml.Mark) -> None:
    """Where each node is: a scalar's value, a mapping's or list's key (its value starts further on)."""
    marks.setdefault(where, mark)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                at = value.start_mark if isinstance(value, yaml.ScalarNode) else key.start_mark
                _marks(value, (*where, key.value), marks, at)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _marks(item, (*where, index), marks, item.start_mark)


class ConfigDocument:
    """The file's data and the position of each of its nodes."""

    def __init__(self, path: Path, data: Any, marks: dict[Location, yaml.Mark]) -> None:
        self.path, self.data, self.marks = path, data, marks

    @classmethod
    def read(cls, path: Path) -> ConfigDocument:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError([f"{path}: error: cannot read the configuration file: {exc.strerror}"]) from None
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else {}
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
            raise ConfigError([f"{where}: error: not valid YAML: {exc.problem or exc.context}"]) from None
        finally:
            loader.dispose()
        marks: dict[Location, yaml.Mark] = {}
        if node is not None:
            _marks(node, (), marks, node.start_mark)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError([f"{path}:1:1: error: the file must be a mapping of keys (tiers:, models:, ...)"])
        return cls(path, data, marks)

    def line_column(self, location: Location) -> tuple[int, int]:
        """Line and column (from 1) of the deepest node of `location` that is in the file; (0, 0) when
        none is. A step the file does not have (a field left out, `routes` of a model given as its list
        alone) is passed over."""
        found: Location = ()
        for step in location:
            if (*found, step) in self.marks:
                found = (*found, step)
        mark = self.marks.get(found)
        return (mark.line + 1, mark.column + 1) if mark else (0, 0)

    def position(self, location: Location) -> str:
        line, column = self.line_column(location)
        return f"{self.path}:{line}:{column}" if line else str(self.path)

    def describe(self, problem: Problem) -> str:
        field = f"{dotted(problem.location)}: " if problem.location else ""
        return f"{self.position(problem.location)}: {problem.severity}: {field}{problem.message}"

    def validate(self, part: type[Part]) -> tuple[Part | None, list[Problem]]:
        """The part of the file that `part` declares, and every problem with it (None when invalid)."""
        try:
            value = part.model_validate(self.data)
        except ValidationError as exc:
            return None, [Problem(tuple(error["loc"]), error["msg"].removeprefix("Value error, "))
                          for error in exc.errors()]
        problems = getattr(value, "problems", None)
        return value, list(problems()) if problems else []

    def part(self, part: type[Part]) -> Part:
        """The part, its warnings logged; ConfigError naming each error."""
        value, problems = self.validate(part)
        errors = [self.describe(p) for p in problems if p.severity == "error"]
        if errors or value is None:
            raise ConfigError(errors)
        for problem in problems:
            log.warning("%s", self.describe(problem))
        return value
