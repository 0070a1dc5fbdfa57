"""The management API over HTTP: for the CLI, for remote Jobs RPC, and for tests.

One pooled aiohttp session per client, so an SMTP ingress pushing to a jobs node reuses
keep-alive connections instead of opening one per email.
"""

from __future__ import annotations

import io
from typing import Any

import aiohttp
import orjson

from mailrunner.api.schemas import JobWire
from mailrunner.errors import (
    ApiError,
    ApiUnavailable,
    DriverError,
    InvalidJob,
    InvalidPipeline,
    NotFound,
    PipelineConflict,
    PipelineNotFound,
    PushTimeout,
)
from mailrunner.jobs.model import Job

_ERRORS: dict[str, type[Exception]] = {
    "PipelineNotFound": PipelineNotFound,
    "PipelineConflict": PipelineConflict,
    "InvalidJob": InvalidJob,
    "InvalidPipeline": InvalidPipeline,
    "PushTimeout": PushTimeout,
}
_REPLY_GRACE = 0.75
"""How long past its push_timeout the node's answer is awaited. The node gives up 0.25 s
before push_timeout, counted from the request's arrival, and a broker driver may take 0.5 s
past that for the broker's verdict; so as long as the request's headers reach the node
within 0.5 s, the ingress never answers 451 for a job the node then stores, and the SMTP
side's own bound (push_timeout + 1 s) still holds."""


class ApiClient:
    """Calls a running mailrunner's API; errors come back as mailrunner exceptions."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        return self._session

    async def call(
        self, method: str, path: str, body: Any = None, *, request_timeout: float | None = None
    ) -> Any:
        """One request; JSON in, JSON (or text for /metrics) out."""
        per_call = aiohttp.ClientTimeout(total=request_timeout) if request_timeout else None
        try:
            async with self._client().request(
                method, self.base_url + path, data=_json_body(body), timeout=per_call
            ) as response:
                if response.content_type == "application/json":
                    data = await response.json()
                else:
                    data = await response.text()
                if response.status >= 400:
                    raise _error(response.status, data)
                return data
        except (aiohttp.ClientConnectionError, TimeoutError) as error:
            raise ApiUnavailable(
                f"cannot reach {self.base_url}: {error or type(error).__name__}"
            ) from None

    async def push(self, job: Job, *, push_timeout: float) -> None:
        """The Jobs RPC push the SMTP side makes when `smtp.jobs.rpc` is set."""
        wire = JobWire.from_job(job, as_base64=True).model_dump(mode="json", exclude_none=True)
        body = {"job": wire, "push_timeout": push_timeout}
        await self.call("POST", "/jobs/push", body, request_timeout=push_timeout + _REPLY_GRACE)


def _json_body(body: Any) -> aiohttp.BytesIOPayload | None:
    """JSON as a stream: aiohttp warns that a multi-megabyte bytes body (an email's event)
    may hold up the event loop, and writes a stream in chunks instead."""
    if body is None:
        return None
    try:
        encoded = orjson.dumps(body)
    except orjson.JSONEncodeError as error:
        raise InvalidJob(f"the request holds text that is not valid Unicode: {error}") from None
    return aiohttp.BytesIOPayload(io.BytesIO(encoded), content_type="application/json")


def _error(status: int, data: Any) -> Exception:
    message = data.get("error", str(data)) if isinstance(data, dict) else str(data)
    kind = data.get("type", "") if isinstance(data, dict) else ""
    if kind in _ERRORS:
        return _ERRORS[kind](message)
    if status == 404:
        return NotFound(message)
    if status == 503:
        return DriverError(message)
    return ApiError(message, status)
