"""Starting and stopping several processes at once. A start is mostly waiting (a service importing and
connecting, a server binding its port) and so is a stop (a graceful shutdown): side by side, several
take little longer than the slowest of them."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from tests.servers import ServiceProcess, free_port


class Stoppable(Protocol):
    def stop(self) -> object: ...


def start_services(*specs: tuple[str, dict[str, str], str]) -> list[ServiceProcess]:
    """What `start_service(name, env, port variable)` does for each spec, all at once: the services in the
    specs' order, each live. If one fails to start, every one is stopped and its error raised."""
    services = []
    for name, env, port_var in specs:
        port = free_port()
        services.append(ServiceProcess(name, {**env, port_var: str(port)}, port))
    with ThreadPoolExecutor(len(services)) as pool:
        futures = [pool.submit(service.start) for service in services]
    errors = [error for future in futures if (error := future.exception()) is not None]
    if errors:
        stop_all(services)
        raise errors[0]
    return services


def stop_all(processes: Iterable[Stoppable]) -> None:
    """`stop()` each, all at once."""
    processes = list(processes)
    if processes:
        with ThreadPoolExecutor(len(processes)) as pool:
            for future in [pool.submit(process.stop) for process in processes]:
                future.result()
