"""A TCP proxy in front of the machine's RabbitMQ, on a thread and loop of its own, which no
test may stop: the proxy plays the broker that went down, hangs or stops answering.

- `cut()`: every connection aborted and nothing listening, as a broker that went down;
  `restore()` listens again on the same port.
- `mute(True)`: what the broker sends is held back (connections stay open) until
  `mute(False)`; what clients send still passes.
- `silence()`: from then on nothing passes either way and new connections are accepted and
  never answered, as a broker host that hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from support.brokers import AMQP_HOST, AMQP_PORT


class BrokerProxy:
    def __init__(self, upstream: tuple[str, int] = (AMQP_HOST, AMQP_PORT)) -> None:
        self.upstream = upstream
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._passing = asyncio.Event()
        self._silent = False
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self._passing.set()
        self.restore()

    def __enter__(self) -> BrokerProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    def restore(self) -> None:
        self._call(self._listen())

    def cut(self) -> None:
        self._call(self._cut())

    def mute(self, muted: bool) -> None:
        self.loop.call_soon_threadsafe(self._passing.clear if muted else self._passing.set)

    def silence(self) -> None:
        self._silent = True
        self.mute(True)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self._call(self._cut())
        tasks = self._call(self._pending())
        for task in tasks:
            self.loop.call_soon_threadsafe(task.cancel)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    async def _pending(self) -> set[asyncio.Task[Any]]:
        return asyncio.all_tasks() - {asyncio.current_task()}

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        if self._silent:
            return  # accepted, and never answered
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        self._writers.append(upstream_writer)
        await asyncio.gather(
            self._pipe(reader, upstream_writer, from_broker=False),
            self._pipe(upstream_reader, writer, from_broker=True),
        )

    async def _pipe(
        self, source: asyncio.StreamReader, target: asyncio.StreamWriter, *, from_broker: bool
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await source.read(65536):
                if from_broker:
                    await self._passing.wait()
                if self._silent:
                    continue  # swallowed; the connection stays open
                target.write(data)
                await target.drain()
        target.transport.abort()
