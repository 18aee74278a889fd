"""The baseline for the limiter benchmark: a bare FastStream request-reply handler on the same broker
setup (same middlewares, same worker count), replying with what it received."""

from faststream.asgi import AsgiFastStream
from faststream.nats import NatsMessage

from shared.bus import make_broker
from shared.service_app import make_service_app
from shared.settings import ServiceSettings


def create_app() -> AsgiFastStream:
    broker = make_broker(ServiceSettings(), "bench-echo")

    @broker.subscriber("bench.echo", queue="bench-echo", max_workers=64)
    async def echo(msg: NatsMessage) -> bytes:
        return msg.body

    return make_service_app(broker, "bench-echo")
