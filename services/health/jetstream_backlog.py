"""How far behind every durable consumer of costwarden's streams is, read from JetStream and exported
as gauges for dashboards and alert rules (a consumer falling behind, dead letters growing)."""

from __future__ import annotations

from nats.js import JetStreamContext
from prometheus_client import Gauge

from shared.subjects import STREAMS

STREAM_MESSAGES = Gauge("costwarden_jetstream_stream_messages", "Messages held by a stream", ["stream"])
PENDING = Gauge("costwarden_jetstream_consumer_pending_messages",
                "Messages of the stream not yet delivered to a durable consumer", ["stream", "consumer"])
ACK_PENDING = Gauge("costwarden_jetstream_consumer_ack_pending_messages",
                    "Messages delivered to a durable consumer and not yet acknowledged", ["stream", "consumer"])


async def export_jetstream_backlog(js: JetStreamContext) -> None:
    """Read every stream and consumer first, then replace the figures at once: a scrape never sees a
    half-updated set, and a deleted consumer's series disappears."""
    streams, consumers = {}, {}
    for spec in STREAMS:
        info = await js.stream_info(spec.name)
        streams[spec.name] = info.state.messages
        for consumer in await js.consumers_info(spec.name):
            if consumer.config.durable_name:
                consumers[(spec.name, consumer.config.durable_name)] = (consumer.num_pending or 0,
                                                                        consumer.num_ack_pending or 0)
    STREAM_MESSAGES.clear()
    PENDING.clear()
    ACK_PENDING.clear()
    for stream, messages in streams.items():
        STREAM_MESSAGES.labels(stream).set(messages)
    for (stream, durable), (pending, ack_pending) in consumers.items():
        PENDING.labels(stream, durable).set(pending)
        ACK_PENDING.labels(stream, durable).set(ack_pending)
