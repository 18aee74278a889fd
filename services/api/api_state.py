"""What the gateway's routes share, built once by the composition root (app.py) and typed, so that a
route, or a test, can be given any implementation of each port."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from fastapi import Request

from services.api.breaker import CircuitBreaker
from services.api.callers import ApiKeyStore, KeyAdmin
from services.api.gateway import Gateway
from services.api.nats_cost_queries import CostQueries
from shared.settings import FileConfig, Settings


@dataclass
class ApiState:
    settings: Settings
    config: FileConfig
    trusted_proxies: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
    gateway: Gateway
    keys: ApiKeyStore
    key_admin: KeyAdmin
    cost_queries: CostQueries
    breakers: Mapping[str, CircuitBreaker]
    readiness: Sequence[tuple[str, Callable[[], Awaitable[object]]]]


def api_state(request: Request) -> ApiState:
    """The state of the app serving this request. Read by each route rather than declared as a FastAPI
    dependency, which FastAPI would solve again on every call of the gateway's hot path."""
    state: ApiState = request.app.state.api
    return state
