"""The live feed behind `GET /events`: events fanned out to every open stream.

Nothing runs and nothing is built while nobody listens: `listening` is False, a publisher
checks it before it builds an event, and the periodic sources (the pipelines' `stats`) tick
only from the first subscriber to the last, computed once per tick for all of them. Each
stream has its own bounded queue; a stream too slow to keep up loses its oldest events
rather than holding the server's memory (EventSource reloads the view when it reconnects,
and a stream that falls that far behind is as good as lost). `close` ends every stream at
once, so a server's shutdown does not wait out its graceful timeout for them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from mailrunner.errors import MailrunnerError

log = structlog.get_logger("mailrunner.inbox")

QUEUE_SIZE = 256
"""Events a stream may fall behind by before it loses its oldest."""


@dataclass(frozen=True, slots=True)
class Event:
    """One server-sent event: its name and its `data` line, already JSON."""

    name: str
    data: bytes

    def encode(self) -> bytes:
        """The event as the text/event-stream format writes it."""
        return b"event: " + self.name.encode() + b"\ndata: " + self.data + b"\n\n"


Source = Callable[[], Awaitable[Any]]
"""Computes a periodic event's data (JSON-able)."""


@dataclass(frozen=True, slots=True)
class _Periodic:
    name: str
    interval: float
    compute: Source


_END = Event("", b"")
"""Put on a stream's queue to end it."""


class Feed:
    """Events to every subscriber; see the module docstring."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[Event]] = set()
        self._periodic: list[_Periodic] = []
        self._tickers: list[asyncio.Task[None]] = []
        self._closed = False

    @property
    def listening(self) -> bool:
        """Whether any stream is open: build an event only then."""
        return bool(self._queues)

    def every(self, name: str, interval: float, compute: Source) -> None:
        """Send `name` every `interval` seconds while anyone listens, with the data `compute`
        returns, computed once for all listeners; a failed computation skips that tick."""
        self._periodic.append(_Periodic(name, interval, compute))

    def publish(self, name: str, data: Any) -> None:
        """Send an event to every open stream (nothing when nobody listens)."""
        if self._queues:
            self._send(Event(name, orjson.dumps(data)))

    def _send(self, event: Event) -> None:
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)

    def subscribe(self) -> Subscription:
        """A stream of the events from now on (registered at once, before its first read),
        until `close`; the periodic ones start with a tick. Use it in `async with`."""
        subscription = Subscription(self)
        if self._closed:
            subscription.queue.put_nowait(_END)
            return subscription
        self._queues.add(subscription.queue)
        if len(self._queues) == 1:
            self._tickers = [asyncio.create_task(self._tick(p)) for p in self._periodic]
        return subscription

    async def _unsubscribe(self, queue: asyncio.Queue[Event]) -> None:
        if queue not in self._queues:
            return
        self._queues.discard(queue)
        if not self._queues:
            await self._stop_tickers()

    async def close(self) -> None:
        """End every stream now and refuse new ones; idempotent."""
        self._closed = True
        queues, self._queues = self._queues, set()
        for queue in queues:
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(_END)
        await self._stop_tickers()

    async def _stop_tickers(self) -> None:
        tickers, self._tickers = self._tickers, []
        for task in tickers:
            task.cancel()
        for task in tickers:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _tick(self, periodic: _Periodic) -> None:
        while True:
            try:
                data = await periodic.compute()
            except MailrunnerError as error:
                log.warning("live event skipped", event=periodic.name, error=str(error))
            else:
                self.publish(periodic.name, data)
            await asyncio.sleep(periodic.interval)


class Subscription:
    """One open stream of a Feed: iterate over its events; leaving `async with` ends it."""

    def __init__(self, feed: Feed) -> None:
        self._feed = feed
        self.queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE_SIZE)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._feed._unsubscribe(self.queue)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        event = await self.queue.get()
        if event is _END:
            self.queue.put_nowait(_END)  # a later read ends too
            raise StopAsyncIteration
        return event
