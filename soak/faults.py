"""Faults on a fixed, seeded schedule over the middle of the run; the log shows each one."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from soak.system import PROVIDER_TIMEOUT_S, System


@dataclass
class Fault:
    at_s: float
    name: str
    act: Callable[[], Awaitable[None]]


def kill_and_restart(system: System, service: str, index: int) -> Callable[[], Awaitable[None]]:
    async def act() -> None:
        replica = system.of(service)[index % len(system.of(service))]
        assert replica.process is not None and replica.process.process is not None
        replica.process.process.kill()
        replica.process.process.wait()
        await asyncio.sleep(2)
        await asyncio.to_thread(replica.start)
    return act


def outage(stop: Callable[[], None], start: Callable[[], None], seconds: float) -> Callable[[], Awaitable[None]]:
    async def act() -> None:
        await asyncio.to_thread(stop)
        await asyncio.sleep(seconds)
        await asyncio.to_thread(start)
    return act


def provider_trouble(system: System) -> Callable[[], Awaitable[None]]:
    async def act() -> None:
        system.set_provider_faults(status=503, count=40)  # a burst of 5xx on both providers
        await asyncio.sleep(6)
        system.set_provider_faults(delay_s=PROVIDER_TIMEOUT_S + 2)  # then answers slower than the gateway waits
        await asyncio.sleep(4)
        system.set_provider_faults()
    return act


def channel_trouble(system: System) -> Callable[[], Awaitable[None]]:
    async def act() -> None:
        system.http_sink.fail_next("/slack", *([(429, 2)] * 3), *([(500, None)] * 3))
        system.smtp.faults.extend(["451 4.3.0 mailbox busy, try later"] * 3)
    return act


def schedule(system: System, duration_s: float, seed: int, short: bool) -> list[Fault]:
    """Every fault once, in a seeded order, spread over 15 %..80 % of the run (the short run: a subset)."""
    faults = [(f"SIGKILL {service} replica, then start it again", kill_and_restart(system, service, seed))
              for service in ("limiter", "cost", "notifier", "health", "backup")]
    faults += [("provider 5xx burst, then timeouts", provider_trouble(system)),
               ("Slack answers 429 with Retry-After, then 500; the SMTP server 451", channel_trouble(system))]
    if short:
        faults = [faults[0], faults[1], faults[5], faults[6]]
    else:
        faults += [
            ("PostgreSQL stopped for 20 s", outage(system.postgres.stop, system.postgres.start, 20)),
            ("Redis restarted", outage(system.redis.stop, system.redis.start, 2)),
            ("a NATS node SIGKILLed, started again 10 s later",
             outage(system.nats[seed % 3].kill, system.nats[seed % 3].start, 10)),
        ]
    random.Random(seed).shuffle(faults)
    step = duration_s * 0.65 / max(1, len(faults) - 1)
    return [Fault(duration_s * 0.15 + i * step, name, act) for i, (name, act) in enumerate(faults)]


async def inject(faults: list[Fault], started: float, log: Callable[[str], None]) -> list[str]:
    done = []
    for fault in faults:
        await asyncio.sleep(max(0.0, started + fault.at_s - time.monotonic()))
        log(f"fault at {fault.at_s:5.0f} s: {fault.name}")
        await fault.act()
        done.append(fault.name)
    return done
