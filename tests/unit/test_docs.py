"""The documentation holds together, without any server:

- every relative link and `#anchor` in README.md and docs/*.md resolves (anchors as GitHub makes them
  from headings: lowercase, spaces to `-`, punctuation dropped, `-1`, `-2` for repeats);
- every alert rule of infra/prometheus/rules.yml has a heading in docs/runbooks.md, and its `runbook`
  annotation links there;
- every HTTP path docs/runbooks.md names (in backticks, or in a `host:port/path` URL such as a curl
  command's) is a route of some service: of the one on that port when the URL names a default port.

The routes are the services' own: their apps are built, never started (each opens its connections in
its lifespan), and asked whether they serve the path.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml
from starlette.routing import Match

from services.deploy.settings import DeploySettings

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNBOOKS = ROOT / "docs" / "runbooks.md"
RULES = ROOT / "infra" / "prometheus" / "rules.yml"

HTTP_SERVICES = ("api", "health", "console")  # FastAPI apps
BUS_SERVICES = ("limiter", "cost", "notifier", "backup")  # FastStream apps with shared/service_app.py's probes

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^\s)>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.M)
HEADING = re.compile(r"^#{1,6}\s+(.+?)(?:\s+#+)?\s*$")
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.I)
LINE_ANCHOR = re.compile(r"^L\d+(?:-L\d+)?$")
LOCAL_URL = re.compile(r"(?:https?://)?(?:localhost|127\.0\.0\.1):(\d+)(/[^\s'\"`<>)]*)")


def prose(text: str) -> str:
    """The text outside fenced code blocks."""
    kept, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            kept.append(line)
    return "\n".join(kept)


def headings(path: Path) -> list[str]:
    return [match[1] for line in prose(path.read_text()).splitlines() if (match := HEADING.match(line))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the text of links, no markup or punctuation, lowercase, `-` for spaces."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in headings(path):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> Iterator[str]:
    text = CODE_SPAN.sub("", prose(path.read_text()))
    yield from LINK.findall(text)
    yield from REFERENCE.findall(text)


def broken(source: Path, target: str) -> str | None:
    """Why a link from `source` does not resolve, or None when it does (or leaves the repository's files)."""
    if EXTERNAL.match(target):
        return None
    path, _, anchor = target.partition("#")
    file = (source.parent / unquote(path)).resolve() if path else source
    if not file.is_relative_to(ROOT):
        return f"{target}: outside the repository"
    if not file.exists():
        return f"{target}: no such file"
    if not anchor:
        return None
    if file.suffix == ".md":
        return None if anchor in anchors(file) else f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}"
    return None if LINE_ANCHOR.match(anchor) else f"{target}: #{anchor} in a file that is not Markdown"


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def paths_named(text: str) -> Iterator[tuple[int | None, str]]:
    """(port or None, path) of every HTTP path in backticks or in a localhost URL."""
    for port, path in LOCAL_URL.findall(text):
        yield int(port), path
    for _, span in CODE_SPAN.findall(prose(text)):
        for word in span.split():
            if word.startswith("/"):
                yield None, word


def serves_fastapi(app: object) -> Callable[[str], bool]:
    def serves(path: str) -> bool:
        scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": [], "query_string": b""}
        return any(route.matches(scope)[0] is not Match.NONE for route in app.routes)  # type: ignore[attr-defined]
    return serves


def serves_bus(app: object) -> Callable[[str], bool]:
    paths = {path for path, _ in app.routes}  # type: ignore[attr-defined]
    return paths.__contains__


@pytest.fixture(scope="module")
def services() -> dict[str, Callable[[str], bool]]:
    """Service name -> whether it serves a path. Each app is built as its process builds it, with its
    logging set-up (which would take over this test session's handlers) left out."""
    served = {}
    with pytest.MonkeyPatch.context() as patch:
        for name in (*HTTP_SERVICES, *BUS_SERVICES):
            module = importlib.import_module(f"services.{name}.app")
            settings_class = getattr(importlib.import_module(f"services.{name}.settings"), f"{name.capitalize()}Settings")
            secret = {"console_session_secret": "docs-test-" * 4} if name == "console" else {}
            settings = settings_class(_env_file=None, costwarden_config=None, **secret)
            patch.setattr(module, "configure_logging", lambda *args, **kwargs: None)
            app = module.create_app(settings)
            served[name] = serves_fastapi(app) if name in HTTP_SERVICES else serves_bus(app)
    return served


def default_ports() -> dict[int, str]:
    return {DeploySettings.model_fields[f"{name}_port"].default: name for name in (*HTTP_SERVICES, *BUS_SERVICES)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(doc: Path):
    problems = [problem for target in links(doc) if (problem := broken(doc, target))]
    assert not problems, f"{doc.relative_to(ROOT)}: " + "; ".join(problems)


def test_headings_become_githubs_anchors():
    assert slug("CostwardenHourlySpendCritical") == "costwardenhourlyspendcritical"
    assert slug("The YAML file (COSTWARDEN_CONFIG)") == "the-yaml-file-costwarden_config"
    assert slug("Issue 11: the gateway's CPU per call") == "issue-11-the-gateways-cpu-per-call"
    assert slug("Where a `429` is [decided](x.md)") == "where-a-429-is-decided"


def test_every_alert_rule_has_a_runbook_and_links_to_it():
    runbooks = set(headings(RUNBOOKS))
    for rule in alert_rules():
        name = rule["alert"]
        assert name in runbooks, f"docs/runbooks.md has no heading {name}"
        link = rule["annotations"]["runbook"]
        assert link == f"docs/runbooks.md#{slug(name)}", f"{name}'s runbook annotation is {link}"
        assert broken(ROOT / "rules.yml", link) is None


def test_every_http_path_in_the_runbooks_is_a_route_of_a_service(services):
    ports = default_ports()
    named = set(paths_named(RUNBOOKS.read_text()))
    assert named, "the runbooks name no endpoint"
    unserved = []
    for port, raw in sorted(named, key=str):
        path = re.split(r"[?#]", raw)[0].rstrip(".,;:")
        candidates = [ports[port]] if port in ports else list(services)
        if not any(services[name](path) for name in candidates):
            unserved.append(f"{raw} ({ports.get(port, 'any service')})")
    assert not unserved, "not a route: " + ", ".join(unserved)
