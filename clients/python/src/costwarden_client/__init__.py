"""costwarden-client: ask costwarden before an LLM call and record the call after it, over NATS.

`Guard` (async) and `SyncGuard` open guarded calls (`guard.call(...)`) and wrap `openai` clients
(`guard.wrap(...)`); `RateLimited` carries the limiter's decision when it says no. See docs/upstream.md
in the costwarden repository."""

from costwarden_client.contract import BilledAttempt, LimitDecision, LimitRequest, LlmCompleted
from costwarden_client.guard import (
    Call,
    CostwardenError,
    Guard,
    InvalidRequest,
    LimiterUnavailable,
    RateLimited,
    RecordFailed,
)
from costwarden_client.openai_wrap import GuardedAsyncOpenAI, GuardedOpenAI
from costwarden_client.sync import SyncCall, SyncGuard
from costwarden_client.tokens import Usage

__all__ = [
    "BilledAttempt", "Call", "CostwardenError", "Guard", "GuardedAsyncOpenAI", "GuardedOpenAI", "InvalidRequest",
    "LimitDecision", "LimitRequest", "LimiterUnavailable", "LlmCompleted", "RateLimited", "RecordFailed",
    "SyncCall", "SyncGuard", "Usage",
]
