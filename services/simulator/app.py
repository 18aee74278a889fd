"""The simulator's routes for its mode (simulator.py says what each mode answers), and /_sim/faults,
/_sim/stats, /_sim/requests and /_sim/calls to steer and watch it."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Route

from services.simulator.simulator import Simulator

KINDS = ("openai", "azure", "anthropic")


def create_app(name: str = "simulator", kind: str = "openai") -> Starlette:
    """A simulator answering as `kind`: openai (any OpenAI-compatible server), azure or anthropic."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    simulator = Simulator(name, kind)
    routes = {
        "openai": [Route("/v1/chat/completions", simulator.completions, methods=["POST"]),
                   Route("/v1/embeddings", simulator.embeddings, methods=["POST"]),
                   Route("/v1/models", simulator.models, methods=["GET"])],
        "azure": [Route("/openai/deployments/{deployment}/chat/completions", simulator.completions, methods=["POST"]),
                  Route("/openai/deployments/{deployment}/embeddings", simulator.embeddings, methods=["POST"]),
                  Route("/openai/models", simulator.models, methods=["GET"])],
        "anthropic": [Route("/v1/messages", simulator.messages, methods=["POST"]),
                      Route("/v1/models", simulator.models, methods=["GET"])],
    }[kind]
    return Starlette(routes=[
        *routes,
        Route("/_sim/faults", simulator.set_faults, methods=["POST"]),
        Route("/_sim/stats", simulator.get_stats, methods=["GET"]),
        Route("/_sim/requests", simulator.get_requests, methods=["GET"]),
        Route("/_sim/calls", simulator.get_calls, methods=["GET"]),
    ])
