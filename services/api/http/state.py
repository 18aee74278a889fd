"""What the gateway's routes share, built once by the composition root (services/api/app.py) and
typed, so that a route, or a test, can be given any implementation of each port."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fastapi import Request

from services.api.admission import Admission
from services.api.breaker import CircuitBreaker
from services.api.gateway import Gateway
from services.api.response_cache import ResponseCache
from services.api.settings import ApiConfig, ApiSettings
from services.keys.key_admin import KeyAdmin
from services.teams.team_admin import TeamAdmin
from shared.cost_query import CostQueries
from shared.probes import ReadinessCheck


@dataclass
class ApiState:
    settings: ApiSettings
    config: ApiConfig
    trusted_proxies: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
    admission: Admission
    gateway: Gateway
    key_admin: KeyAdmin
    cost_queries: CostQueries
    breakers: Mapping[str, CircuitBreaker]
    readiness: Sequence[ReadinessCheck]
    teams: TeamAdmin
    cache: ResponseCache | None = None  # None: the response cache is off for every model


def api_state(request: Request) -> ApiState:
    """The state of the app serving this request. Read by each route rather than declared as a FastAPI
    dependency, which FastAPI would solve again on every call of the gateway's hot path."""
    state: ApiState = request.app.state.api
    return state
