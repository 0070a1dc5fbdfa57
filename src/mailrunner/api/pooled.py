"""ApiClient's default transport: one pooled aiohttp session per client, so an SMTP node
pushing to a jobs node reuses keep-alive connections instead of opening one per email."""

from __future__ import annotations

import io

import aiohttp

from mailrunner.api.routes import JSON
from mailrunner.api.transport import NoAnswer, Reply, Request, reason


class PooledTransport:
    """Keep-alive connections, and a bound on each whole request (`timeout`, in seconds)."""

    def __init__(self, timeout: float) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def request(self, request: Request) -> Reply:
        # aiohttp reads timeout=None as "no bound at all": give the session's when no other
        per_call = aiohttp.ClientTimeout(total=request.timeout) if request.timeout else None
        try:
            async with self._client().request(
                request.method,
                request.url,
                data=_stream(request.body),
                headers=request.headers,
                timeout=per_call or self._timeout,
            ) as response:
                return Reply(
                    response.status,
                    response.content_type,
                    response.charset or "utf-8",
                    await response.read(),
                )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as error:
            raise NoAnswer(reason(error), sent=False) from None
        except (aiohttp.ClientConnectionError, TimeoutError) as error:
            raise NoAnswer(reason(error), sent=True) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session


def _stream(body: bytes | None) -> aiohttp.BytesIOPayload | None:
    """JSON as a stream: aiohttp warns that a multi-megabyte bytes body (an email's event)
    may hold up the event loop, and writes a stream in chunks instead."""
    if body is None:
        return None
    return aiohttp.BytesIOPayload(io.BytesIO(body), content_type=JSON)
