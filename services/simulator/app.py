"""The simulator's routes: /v1/chat/completions, /v1/embeddings, /v1/models, and /_sim/faults, /_sim/stats and
/_sim/requests to steer and watch it (services/simulator/simulator.py says what each fault does)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Route

from services.simulator.simulator import Simulator


def create_app(name: str = "simulator") -> Starlette:
    simulator = Simulator(name)
    return Starlette(routes=[
        Route("/v1/chat/completions", simulator.completions, methods=["POST"]),
        Route("/v1/embeddings", simulator.embeddings, methods=["POST"]),
        Route("/v1/models", simulator.models, methods=["GET"]),
        Route("/_sim/faults", simulator.set_faults, methods=["POST"]),
        Route("/_sim/stats", simulator.get_stats, methods=["GET"]),
        Route("/_sim/requests", simulator.get_requests, methods=["GET"]),
    ])
