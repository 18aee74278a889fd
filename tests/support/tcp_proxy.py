"""A TCP proxy on loopback that a test steers: it forwards both ways until told to lose, on the
connection that sends a given pattern, everything the server answers after it (a lost ack)."""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.seen: dict[bytes, int] = {}  # how many times each watched pattern went to the server
        self._lose_replies_after: bytes | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def lose_replies_after(self, pattern: bytes) -> None:
        """The next connection that sends `pattern` gets nothing more from the server, ever."""
        self._lose_replies_after = pattern
        self.seen.setdefault(pattern, 0)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.close()
            return
        silenced = asyncio.Event()
        upstream = asyncio.create_task(self._pipe(client_reader, server_writer, silenced, watch=True))
        downstream = asyncio.create_task(self._pipe(server_reader, client_writer, silenced, watch=False))
        self._connections.update((upstream, downstream))
        await asyncio.wait((upstream, downstream), return_when=asyncio.FIRST_COMPLETED)
        for task in (upstream, downstream):
            task.cancel()
            self._connections.discard(task)
        for writer in (client_writer, server_writer):
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, silenced: asyncio.Event,
                    watch: bool) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if watch:
                    self._watch(data, silenced)
                elif silenced.is_set():
                    continue
                writer.write(data)
                await writer.drain()

    def _watch(self, data: bytes, silenced: asyncio.Event) -> None:
        for pattern in self.seen:
            self.seen[pattern] += data.count(pattern)
        if self._lose_replies_after is not None and self._lose_replies_after in data:
            self._lose_replies_after = None
            silenced.set()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
