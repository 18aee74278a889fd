"""The two messages of an upstream service with plain nats-py, no costwarden code: what a service in any
other language does with its own NATS client (docs/asyncapi.yaml describes every field).

    NATS_URL=nats://127.0.0.1:4222 NATS_NKEY_SEED_FILE=.run/nats-identities/upstream.nk python examples/plain_nats.py

1. Ask `llm.request` (request-reply) before calling the provider; `allowed: false` means do not call.
2. Call the provider.
3. Publish `llm.completed` to JetStream with the same request id as `Nats-Msg-Id`, and publish it again
   until it is acknowledged: the id makes a repeat harmless, and an unrecorded call keeps its
   reservation until it expires. If the call failed, still publish it, with `success: false`, the
   error, and the prompt tokens it was sent (`usage_source: "estimated"`)."""

from __future__ import annotations

import asyncio
import json
import os
import uuid

import nats
import nats.errors
import nats.js.errors


async def main() -> None:
    nc = await nats.connect(os.environ.get("NATS_URL", "nats://127.0.0.1:4222").split(","),
                            nkeys_seed=os.environ.get("NATS_NKEY_SEED_FILE"),
                            inbox_prefix="_INBOX_upstream")  # the upstream identity reads only these replies
    request_id = uuid.uuid4().hex
    user = os.environ.get("EXAMPLE_USER", "example-user")
    model = "meta-llama/Llama-3-8b-chat-hf"

    question = {"request_id": request_id, "user_id": user, "tier": "pro", "model": model,
                "prompt_tokens_estimate": 42, "max_tokens": 100}
    reply = await nc.request("llm.request", json.dumps(question).encode(), timeout=2)
    decision = json.loads(reply.data)
    if not decision.get("allowed"):
        print(f"denied: {decision.get('reason')} (retry after {decision.get('retry_after_s')} s)")
        await nc.close()
        return

    prompt_tokens, completion_tokens = 42, 17  # from your provider's answer (its usage object)

    completed = {"id": request_id, "request_id": request_id, "user_id": user, "tier": "pro",
                 "provider": "together_ai", "model": model, "prompt_tokens": prompt_tokens,
                 "completion_tokens": completion_tokens, "endpoint": "/v1/chat/completions", "success": True,
                 "latency_ms": 850}
    js = nc.jetstream()
    while True:
        try:
            ack = await js.publish("llm.completed", json.dumps(completed).encode(), timeout=2,
                                   headers={"Nats-Msg-Id": request_id})
            break
        except (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError):
            await asyncio.sleep(1)  # not acknowledged: publish the same message again
    print(f"recorded {request_id} (stream {ack.stream}, sequence {ack.seq}, duplicate {ack.duplicate})")
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
