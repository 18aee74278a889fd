"""An upstream service that calls its LLM provider itself and uses costwarden for permission and
bookkeeping, with costwarden-client (`pip install ./clients/python`).

    NATS_URL=nats://127.0.0.1:4222 NATS_NKEY_SEED_FILE=.run/nats-identities/upstream.nk \
    OPENAI_BASE_URL=http://127.0.0.1:3010/v1 OPENAI_API_KEY=sk-local python examples/upstream_worker.py

It summarizes a few documents for one user. Each call is asked for before it is made and recorded
after it; a denied call is put back for later (RateLimited says when)."""

from __future__ import annotations

import asyncio
import os

import openai
from costwarden_client import Guard, RateLimited

DOCUMENTS = ["costwarden rate-limits callers by tier and prices every completion."]


async def main() -> None:
    user = os.environ.get("EXAMPLE_USER", "example-user")
    async with await Guard.connect() as guard:  # NATS_URL and NATS_NKEY_SEED_FILE, as the services
        llm = guard.wrap(openai.AsyncOpenAI(), user_id=user, tier="pro", tags={"feature": "summaries"})
        for document in DOCUMENTS:
            try:
                answer = await llm.chat.completions.create(
                    model="gpt-4o-mini", max_tokens=60,
                    messages=[{"role": "user", "content": f"Summarize in one line: {document}"}])
            except RateLimited as denied:
                print(f"not now: {denied} (retry in {denied.retry_after_s} s)")
                continue
            print(answer.choices[0].message.content)


if __name__ == "__main__":
    asyncio.run(main())
