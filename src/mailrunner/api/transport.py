"""How ApiClient's requests travel, and the standard library's way for a single call.

Two transports carry the same requests: `PooledTransport` (api/pooled.py), one aiohttp
session whose keep-alive connections serve every call of a long-lived process (an SMTP
node pushing each email to a jobs node), and `OneShotTransport` here, http.client on a
worker thread, for a caller that makes one call: importing aiohttp takes longer than that
call does. A CLI goes further and calls `request_once` without any event loop.
"""

from __future__ import annotations

import http.client
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from mailrunner.api.routes import JSON


@dataclass(frozen=True)
class Reply:
    """An HTTP answer, whatever its status."""

    status: int
    content_type: str
    charset: str
    body: bytes


@dataclass(frozen=True)
class Request:
    """One request as ApiClient sends it (a body as JSON); `timeout` bounds the whole call,
    None leaving it to the transport's own."""

    method: str
    url: str
    body: bytes | None
    headers: Mapping[str, str]
    timeout: float | None = None


class NoAnswer(Exception):
    """The request got no answer. `sent` is False when it never left (no connection, or
    none in time): then the server did nothing; else it may have carried the request out."""

    def __init__(self, reason: str, *, sent: bool) -> None:
        super().__init__(reason)
        self.sent = sent


class Transport(Protocol):
    async def request(self, request: Request) -> Reply:
        """Send one request; raise NoAnswer when none comes."""

    async def close(self) -> None: ...


def reason(error: BaseException) -> str:
    return str(error) or type(error).__name__


class OneShotTransport:
    """A new connection per request, made on a worker thread so the loop never blocks."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout

    async def request(self, request: Request) -> Reply:
        # here, not at the top: a CLI calls request_once directly and never loads asyncio
        import asyncio  # noqa: PLC0415

        return await asyncio.to_thread(request_once, request, request.timeout or self._timeout)

    async def close(self) -> None:
        """Nothing stays open between requests."""


def request_once(request: Request, timeout: float) -> Reply:
    """One request on a new connection, blocking, bounded by `timeout` (not the request's
    own): for a CLI that makes one call and needs no event loop, and for OneShotTransport's
    worker thread."""
    body, headers = request.body, request.headers
    sent_headers = {**headers, "Content-Type": JSON} if body is not None else dict(headers)
    parts = urlsplit(request.url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = kind(parts.hostname or "", parts.port, timeout=timeout)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        try:
            connection.connect()
        except OSError as error:
            raise NoAnswer(reason(error), sent=False) from None
        try:
            connection.request(request.method, target, body=body, headers=sent_headers)
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as error:
            raise NoAnswer(reason(error), sent=True) from None
    finally:
        connection.close()
    message = response.headers
    return Reply(
        response.status,
        message.get_content_type(),
        message.get_content_charset() or "utf-8",
        data,
    )
