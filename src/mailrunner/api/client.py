"""The management API over HTTP: for the CLI, for remote Jobs RPC, and for tests.

One pooled aiohttp session per client, so an SMTP ingress pushing to a jobs node reuses
keep-alive connections instead of opening one per email.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from mailrunner.api.schemas import (
    CountResponse,
    DeclareResponse,
    FailedResponse,
    JobWire,
    PeekResponse,
    PipelinesResponse,
    PushBatchResponse,
    StatResponse,
)
from mailrunner.errors import (
    ApiError,
    ApiUnavailable,
    DriverError,
    Forbidden,
    InvalidJob,
    InvalidPipeline,
    NotFound,
    PipelineConflict,
    PipelineNotFound,
    PushOutcomeUnknown,
    PushTimeout,
    RequestOutcomeUnknown,
    UnsupportedMediaType,
)
from mailrunner.jobs.deadline import DEFAULT_PUSH_TIMEOUT, REPLY_GRACE
from mailrunner.jobs.model import FailedJob, Job, PushResult

_ERRORS: dict[str, type[Exception]] = {
    "PipelineNotFound": PipelineNotFound,
    "PipelineConflict": PipelineConflict,
    "InvalidJob": InvalidJob,
    "InvalidPipeline": InvalidPipeline,
    "PushTimeout": PushTimeout,
    "PushOutcomeUnknown": PushOutcomeUnknown,
    "Forbidden": Forbidden,
    "UnsupportedMediaType": UnsupportedMediaType,
}
_READING_METHODS = frozenset({"GET", "HEAD"})


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
        """One request; JSON in, JSON (or text for /metrics) out. A change is always sent as
        JSON, `{}` when it has no parameters: the server refuses any other type."""
        if body is None and method.upper() not in _READING_METHODS:
            body = {}
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
            raise _unreachable(self.base_url, method, path, error) from None

    # --- Jobs RPC: the JobsService methods, over HTTP ----------------------------------------

    async def push(self, job: Job, *, push_timeout: float = DEFAULT_PUSH_TIMEOUT) -> None:
        """Store one job; the SMTP side's push when `smtp.jobs.rpc` is set."""
        wire = JobWire.from_job(job, as_base64=True).model_dump(mode="json", exclude_none=True)
        body = {"job": wire, "push_timeout": push_timeout}
        await self.call("POST", "/jobs/push", body, request_timeout=push_timeout + REPLY_GRACE)

    async def push_batch(
        self, jobs: Sequence[Job], *, push_timeout: float = DEFAULT_PUSH_TIMEOUT
    ) -> list[PushResult]:
        wires = [JobWire.from_job(job).model_dump(mode="json", exclude_none=True) for job in jobs]
        body = {"jobs": wires, "push_timeout": push_timeout}
        data = await self.call(
            "POST", "/jobs/push_batch", body, request_timeout=push_timeout + REPLY_GRACE
        )
        return [PushResult(r.id, r.error) for r in PushBatchResponse.model_validate(data).results]

    async def list_pipelines(self) -> list[str]:
        data = await self.call("GET", "/jobs/pipelines")
        return PipelinesResponse.model_validate(data).pipelines

    async def declare(
        self, name: str, settings: Mapping[str, Any], *, consume: bool = False
    ) -> bool:
        """Declare a pipeline from a `jobs.pipelines.NAME` block; True if it was new."""
        body = {**settings, "name": name, "consume": consume}
        return DeclareResponse.model_validate(
            await self.call("POST", "/jobs/pipelines", body)
        ).created

    async def destroy(self, pipeline: str, *, purge: bool = False) -> None:
        await self.call("POST", f"{pipeline_path(pipeline)}/destroy", {"purge": purge})

    async def pause(self, pipeline: str) -> None:
        await self.call("POST", f"{pipeline_path(pipeline)}/pause")

    async def resume(self, pipeline: str) -> None:
        await self.call("POST", f"{pipeline_path(pipeline)}/resume")

    async def stat(self, pipeline: str) -> StatResponse:
        return StatResponse.model_validate(
            await self.call("GET", f"{pipeline_path(pipeline)}/stat")
        )

    async def peek(self, pipeline: str, limit: int = 10) -> list[Job]:
        data = await self.call("GET", f"{pipeline_path(pipeline)}/peek?limit={limit}")
        return [wire.to_job() for wire in PeekResponse.model_validate(data).jobs]

    async def list_failed(self, pipeline: str, limit: int = 100) -> list[FailedJob]:
        data = await self.call("GET", f"{pipeline_path(pipeline)}/failed?limit={limit}")
        return [
            FailedJob(entry.job.to_job(), entry.error, entry.attempts, entry.failed_at)
            for entry in FailedResponse.model_validate(data).failed
        ]

    async def retry_failed(self, pipeline: str, ids: Sequence[str] | None = None) -> int:
        return await self._count(f"{pipeline_path(pipeline)}/failed/retry", ids)

    async def purge_failed(self, pipeline: str, ids: Sequence[str] | None = None) -> int:
        return await self._count(f"{pipeline_path(pipeline)}/failed/purge", ids)

    async def _count(self, path: str, ids: Sequence[str] | None) -> int:
        body = {"ids": list(ids) if ids is not None else None}
        return CountResponse.model_validate(await self.call("POST", path, body)).count


def pipeline_path(name: str) -> str:
    """A pipeline's API path; the name is quoted, so any name a pipeline may have works."""
    return "/jobs/pipelines/" + quote(name, safe="")


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


def _unreachable(base_url: str, method: str, path: str, error: Exception) -> ApiUnavailable:
    """No answer: the server did nothing if the request never left (no connection, or none
    in time); a change that may have been sent may have been done, or may be done yet."""
    reason = str(error) or type(error).__name__
    never_sent = isinstance(error, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)
    if never_sent or method.upper() in _READING_METHODS:
        return ApiUnavailable(f"cannot reach {base_url}: {reason}")
    return RequestOutcomeUnknown(
        f"no answer from {base_url} to {method.upper()} {path}, which it may have carried out"
        f" or may still: {reason}"
    )


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
