"""LLM providers behind one interface: the routes of a public model, in the order its strategy gives
(fallback: as configured; weighted: spread by weight, the others as fallbacks; least_busy: fewest calls
in flight on this replica first), each with bounded retries on 429/5xx/network errors
(shared/backoff.py, with jitter), a circuit breaker per provider on this replica, and the provider's
rpm/tpm ceilings counted across replicas. The HTTP client and the shared counters are ports
(aiohttp_provider_client.py, redis_route_ceilings.py)."""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from prometheus_client import Counter

from services.api.breaker import CircuitBreaker
from shared.backoff import backoff_s
from shared.policy import ModelRoute, RouteStrategy

log = logging.getLogger(__name__)

Operation = Literal["chat", "stream", "embeddings"]

ROUTE_CALLS = Counter("costwarden_api_route_calls_total",
                      "Routes tried, by public model, provider, the provider's model and outcome (answered, failed, "
                      "refused, skipped_open, skipped_ceiling)", ["model", "provider", "served_model", "outcome"])
CEILINGS_UNCHECKED = Counter("costwarden_api_route_ceiling_unchecked_total",
                             "Calls sent to a deployment with rpm/tpm ceilings that could not be checked "
                             "(Redis unreachable)", ["provider"])


class ProviderError(Exception):
    """One failed attempt. `billable`: the provider had the request and may have worked on it (a timeout
    while waiting for the answer, a connection cut mid-answer); providers bill such attempts.
    `retry_after_s`: how long the provider asked to be left alone (its Retry-After)."""

    def __init__(self, provider: str, message: str, status: int | None = None, timeout: bool = False,
                 billable: bool = False, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status
        self.timeout = timeout
        self.billable = billable
        self.retry_after_s = retry_after_s
        self.served_model = ""  # the provider's model the attempt asked for (set by the router)

    @property
    def retryable(self) -> bool:
        return self.timeout or self.status is None or self.status == 429 or self.status >= 500

    def describe(self) -> str:
        if self.timeout:
            return f"{self.provider}: timed out"
        if self.status is None:
            return f"{self.provider}: {self}"
        return f"{self.provider}: HTTP {self.status} {self}"


class ProviderStreamBroken(Exception):
    """A streamed answer broke off (its message names how: ReadTimeout, RemoteProtocolError, ...)."""


@dataclass(frozen=True)
class Skip:
    """A route passed over without a call, and how long it stays so."""

    provider: str
    reason: str
    wait_s: float

    def describe(self) -> str:
        return f"{self.provider}: {self.reason}, skipped"


class ProvidersFailed(Exception):
    """No provider could serve the call; `errors` says why for each one tried, `skipped` for each one
    passed over."""

    def __init__(self, attempts: Sequence[ProviderError], skipped: Sequence[Skip]) -> None:
        self.attempts = list(attempts)  # every failed attempt, retries included
        self.skipped = list(skipped)
        last_of = {attempt.provider: attempt for attempt in self.attempts}
        self.errors = list(last_of.values())  # each provider's last failure, in the order they were tried
        parts = [e.describe() for e in self.errors] + [s.describe() for s in self.skipped]
        super().__init__("; ".join(parts) or "no provider configured for this model")

    @property
    def timed_out(self) -> bool:
        return bool(self.errors) and all(e.timeout for e in self.errors)

    @property
    def retry_after_s(self) -> float | None:
        """When every route is cooling down (skipped, or its provider's last answer asked for time with
        Retry-After): how long until the first is back."""
        waits = [skip.wait_s for skip in self.skipped] + [error.retry_after_s for error in self.errors]
        if not waits or None in waits:
            return None
        return min(wait for wait in waits if wait is not None)


class ProviderStream(Protocol):
    """A streamed answer, line by line; a connection that breaks mid-way raises ProviderStreamBroken."""

    def lines(self) -> AsyncIterator[str]: ...

    async def aclose(self) -> None: ...


class ProviderClient(Protocol):
    """One provider's endpoints, in its own wire format; answers in OpenAI's. Failures are ProviderError."""

    name: str

    async def complete(self, model: str, payload: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
        """The answer parsed (to read its usage) and as relayed to the caller."""
        ...

    async def embed(self, model: str, payload: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]: ...

    async def open_stream(self, model: str, payload: Mapping[str, Any]) -> ProviderStream: ...

    async def aclose(self) -> None: ...


class CeilingsUnavailable(Exception):
    """The shared counters cannot be reached: the ceiling goes unchecked for this call."""


class RouteCeilings(Protocol):
    """Requests and tokens a minute per deployment, counted across every gateway replica."""

    async def admit(self, provider: str, rpm: int | None, tpm: int | None, tokens: int) -> float:
        """0 when the deployment takes the call (which is then counted), else the seconds until the
        window that would take it; CeilingsUnavailable when the counters cannot be reached."""
        ...


@dataclass
class Deployment:
    """A provider as the router uses it: its client, its breaker, its retries and its ceilings, and the
    calls in flight to it from this replica."""

    client: ProviderClient
    breaker: CircuitBreaker
    max_retries: int
    rpm: int | None = None
    tpm: int | None = None
    in_flight: int = 0
    has_ceiling: bool = field(init=False)

    def __post_init__(self) -> None:
        self.has_ceiling = self.rpm is not None or self.tpm is not None


@dataclass
class ProviderCall:
    """The attempt that answered, and every attempt that failed before it."""

    provider: str
    upstream_model: str
    body: dict[str, Any] | None = None
    raw: bytes = b""
    stream: ProviderStream | None = None
    failed_attempts: list[ProviderError] = field(default_factory=list)
    release: Callable[[], None] | None = None  # the stream's slot in its deployment's calls in flight

    def lines(self) -> AsyncIterator[str]:
        assert self.stream is not None
        return self.stream.lines()

    async def close(self) -> None:
        if self.release is not None:
            self.release()
            self.release = None
        if self.stream is not None:
            await self.stream.aclose()


def route_order(routes: Sequence[ModelRoute], strategy: RouteStrategy, in_flight: Callable[[str], int],
                draw: Callable[[], float] = random.random) -> Sequence[ModelRoute]:
    """The order a call tries a model's routes in. weighted: a weighted shuffle (each route first with
    the probability weight / total weight, and so on for the rest); least_busy: by calls in flight to
    its provider on this replica, ties in the configured order."""
    if strategy == "fallback" or len(routes) < 2:
        return routes
    if strategy == "weighted":
        return sorted(routes, key=lambda route: draw() ** (1 / route.weight), reverse=True)
    return sorted(routes, key=lambda route: in_flight(route.provider))


class RouteMetrics:
    """The per-route counter's children, made once each (labels() on every call costs more)."""

    def __init__(self) -> None:
        self._children: dict[tuple[str, str, str, str], Any] = {}

    def count(self, model: str, route: ModelRoute, outcome: str) -> None:
        key = (model, route.provider, route.model, outcome)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = ROUTE_CALLS.labels(*key)
        child.inc()


class ProviderRouter:
    """Tries the routes of a model in its strategy's order, skipping providers without a key, with an
    open circuit, or over their rpm/tpm ceiling."""

    def __init__(self, deployments: Mapping[str, Deployment], ceilings: RouteCeilings | None = None,
                 retry_initial_s: float = 0.1, retry_max_s: float = 2.0) -> None:
        self.deployments = dict(deployments)
        self.ceilings = ceilings
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.metrics = RouteMetrics()

    @property
    def breakers(self) -> dict[str, CircuitBreaker]:
        return {name: deployment.breaker for name, deployment in self.deployments.items()}

    def in_flight(self, provider: str) -> int:
        deployment = self.deployments.get(provider)
        return deployment.in_flight if deployment is not None else 0

    @staticmethod
    async def _attempt(deployment: Deployment, model: str, payload: Mapping[str, Any], operation: Operation,
                       attempts: list[ProviderError]) -> ProviderCall:
        client = deployment.client
        deployment.in_flight += 1
        streaming = False
        try:
            if operation == "stream":
                call = ProviderCall(client.name, model, stream=await client.open_stream(model, payload))
                streaming = True
                call.release = lambda: setattr(deployment, "in_flight", deployment.in_flight - 1)
                return call
            body, raw = await (client.complete(model, payload) if operation == "chat"
                               else client.embed(model, payload))
            return ProviderCall(client.name, model, body=body, raw=raw)
        except ProviderError as exc:
            exc.served_model = model
            attempts.append(exc)
            raise
        finally:
            if not streaming:
                deployment.in_flight -= 1

    async def _with_retries(self, deployment: Deployment, model: str, payload: Mapping[str, Any],
                            operation: Operation, attempts: list[ProviderError]) -> ProviderCall:
        """A plain loop on the hot path: almost every call succeeds on its first attempt, and then costs
        nothing more (a retry library's machinery costs CPU on every call). A provider that names its
        Retry-After is not retried: it is held off that long, and the call goes to the next route."""
        for retry in range(1, deployment.max_retries + 1):
            try:
                return await self._attempt(deployment, model, payload, operation, attempts)
            except ProviderError as exc:
                if not exc.retryable or exc.retry_after_s is not None:
                    raise
            await asyncio.sleep(backoff_s(retry, self.retry_initial_s, self.retry_max_s, random.random()))
        return await self._attempt(deployment, model, payload, operation, attempts)

    async def _over_ceiling(self, route: ModelRoute, deployment: Deployment, tokens: int) -> Skip | None:
        if self.ceilings is None:
            return None
        try:
            wait_s = await self.ceilings.admit(route.provider, deployment.rpm, deployment.tpm, tokens)
        except CeilingsUnavailable:
            CEILINGS_UNCHECKED.labels(route.provider).inc()
            return None
        return Skip(route.provider, "over its rpm/tpm ceiling", wait_s) if wait_s > 0 else None

    async def call(self, model: str, routes: Sequence[ModelRoute], payload: Mapping[str, Any],
                   operation: Operation = "chat", strategy: RouteStrategy = "fallback", tokens: int = 0
                   ) -> ProviderCall:
        """The first route that answers, for the public `model`. `tokens`: what the call may use (its
        prompt and completion limit), counted against a tpm ceiling. Every failed attempt, retries
        included, is kept in `attempts` of the ProvidersFailed raised when none answers."""
        attempts: list[ProviderError] = []
        skipped: list[Skip] = []
        for route in routes if strategy == "fallback" else route_order(routes, strategy, self.in_flight):
            deployment = self.deployments.get(route.provider)
            if deployment is None:
                continue
            breaker = deployment.breaker
            skip = None if breaker.allow() else Skip(route.provider, "circuit open", breaker.remaining_s())
            if skip is None and deployment.has_ceiling:
                skip = await self._over_ceiling(route, deployment, tokens)
            if skip is not None:
                self.metrics.count(model, route, "skipped_open" if skip.reason == "circuit open" else "skipped_ceiling")
                skipped.append(skip)
                continue
            try:
                result = await self._with_retries(deployment, route.model, payload, operation, attempts)
            except ProviderError as exc:
                if exc.retryable:
                    self._failed(breaker, exc)
                    self.metrics.count(model, route, "failed")
                    log.warning("provider %s failed for %s: %s", route.provider, route.model, exc.describe())
                    continue
                breaker.record_success()  # the provider answered; the request was what it refused
                self.metrics.count(model, route, "refused")
                raise ProvidersFailed(attempts, skipped) from exc
            breaker.record_success()
            self.metrics.count(model, route, "answered")
            result.failed_attempts = attempts
            return result
        raise ProvidersFailed(attempts, skipped)

    @staticmethod
    def _failed(breaker: CircuitBreaker, exc: ProviderError) -> None:
        if exc.retry_after_s is not None:
            breaker.hold(exc.retry_after_s)
        else:
            breaker.record_failure()

    async def aclose(self) -> None:
        for deployment in self.deployments.values():
            await deployment.client.aclose()


def wait_header(seconds: float) -> str:
    """Retry-After in whole seconds, rounded up (a client coming back early is refused again)."""
    return str(max(1, math.ceil(seconds)))
