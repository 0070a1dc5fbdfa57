"""The management API over HTTP: for the CLI, for remote Jobs RPC, and for tests.

Every call goes through the route table (api/routes.py), never the server's modules; how
the bytes travel is the transport's business (api/transport.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import is_dataclass
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

from mailrunner.api import routes
from mailrunner.api.routes import BINARY_TYPES, JSON, Route
from mailrunner.api.schemas import (
    Declare,
    DestroyRequest,
    IdsRequest,
    JobWire,
    PushBatchRequest,
    PushRequest,
    declare_request_model,
)
from mailrunner.api.transport import NoAnswer, Reply, Request, Transport, request_once
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
from mailrunner.jobs.model import FailedJob, Job, PipelineStat, PushResult

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
R = TypeVar("R")


class ApiClient:
    """Calls a running mailrunner's API; errors come back as mailrunner exceptions.

    `transport` carries the requests: by default a pooled aiohttp session (api/pooled.py)
    for a process that calls many times, or a `OneShotTransport`; a CLI uses `call_once`.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = 30.0,
        *,
        transport: Transport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = _auth(token)
        if transport is None:
            # here, not at the top: a one-shot caller need not load aiohttp
            from mailrunner.api.pooled import PooledTransport  # noqa: PLC0415

            transport = PooledTransport(timeout)
        self._transport = transport

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._transport.close()

    async def send(
        self,
        route: Route[R],
        body: BaseModel | None = None,
        *,
        params: Mapping[str, str] | None = None,
        query: Mapping[str, int | str] | None = None,
        request_timeout: float | None = None,
    ) -> R:
        """One call of `route`, its `{name}` parts from `params`; answers with the route's
        response model (the text or JSON as sent where it has none). A change is always sent
        as JSON, `{}` when it has no parameters: the server refuses any other type. Only the
        fields a body was given are sent, so the server fills in its own defaults."""
        method, path, sent = _request_of(route, body, params, query)
        try:
            reply = await self._transport.request(
                Request(method, self.base_url + path, sent, self._headers, request_timeout)
            )
        except NoAnswer as error:
            raise _unreachable(self.base_url, method, path, error) from None
        return _answer_of(route, reply)

    # --- Jobs RPC: the JobsService methods, over HTTP ----------------------------------------

    async def push(self, job: Job, *, push_timeout: float = DEFAULT_PUSH_TIMEOUT) -> None:
        """Store one job; the SMTP side's push when `smtp.jobs.rpc` is set."""
        body = PushRequest(job=JobWire.from_job(job, as_base64=True), push_timeout=push_timeout)
        await self.send(routes.PUSH, body, request_timeout=push_timeout + REPLY_GRACE)

    async def push_batch(
        self, jobs: Sequence[Job], *, push_timeout: float = DEFAULT_PUSH_TIMEOUT
    ) -> list[PushResult]:
        body = PushBatchRequest(
            jobs=[JobWire.from_job(job) for job in jobs], push_timeout=push_timeout
        )
        answer = await self.send(
            routes.PUSH_BATCH, body, request_timeout=push_timeout + REPLY_GRACE
        )
        return [PushResult(result.id, result.error) for result in answer.results]

    async def list_pipelines(self) -> list[str]:
        return (await self.send(routes.LIST_PIPELINES)).pipelines

    async def declare(
        self, name: str, settings: Mapping[str, Any], *, consume: bool = False
    ) -> bool:
        """Declare a pipeline from a `jobs.pipelines.NAME` block; True if it was new."""
        return (await self.send(routes.DECLARE, declare_request(name, settings, consume))).created

    async def destroy(self, pipeline: str, *, purge: bool = False) -> None:
        await self.send(routes.DESTROY, DestroyRequest(purge=purge), params={"name": pipeline})

    async def pause(self, pipeline: str) -> None:
        await self.send(routes.PAUSE, params={"name": pipeline})

    async def resume(self, pipeline: str) -> None:
        await self.send(routes.RESUME, params={"name": pipeline})

    async def stat(self, pipeline: str) -> PipelineStat:
        return await self.send(routes.STAT, params={"name": pipeline})

    async def peek(self, pipeline: str, limit: int = 10) -> list[Job]:
        answer = await self.send(routes.PEEK, params={"name": pipeline}, query={"limit": limit})
        return [wire.to_job() for wire in answer.jobs]

    async def list_failed(self, pipeline: str, limit: int = 100) -> list[FailedJob]:
        answer = await self.send(routes.FAILED, params={"name": pipeline}, query={"limit": limit})
        return [
            FailedJob(entry.job.to_job(), entry.error, entry.attempts, entry.failed_at)
            for entry in answer.failed
        ]

    async def retry_failed(self, pipeline: str, ids: Sequence[str] | None = None) -> int:
        body = IdsRequest(ids=list(ids) if ids is not None else None)
        return (await self.send(routes.RETRY_FAILED, body, params={"name": pipeline})).count

    async def purge_failed(self, pipeline: str, ids: Sequence[str] | None = None) -> int:
        body = IdsRequest(ids=list(ids) if ids is not None else None)
        return (await self.send(routes.PURGE_FAILED, body, params={"name": pipeline})).count


def call_once(
    base_url: str, token: str | None, route: Route[R], body: BaseModel | None = None, **request: Any
) -> R:
    """`ApiClient.send` for a program that makes one call and has no event loop: the same
    request and the same answer or error, over one blocking connection. `request` holds
    `fetch_once`'s keywords (`params`, `query`, `timeout`)."""
    return _validated(route, fetch_once(base_url, token, route, body, **request))


def fetch_once(
    base_url: str,
    token: str | None,
    route: Route[Any],
    body: BaseModel | None = None,
    *,
    params: Mapping[str, str] | None = None,
    query: Mapping[str, int | str] | None = None,
    timeout: float,
) -> Any:
    """`call_once`'s answer as the server sent it (the JSON decoded, the text, or the bytes
    of a binary route), not validated: for a program that only shows it (the CLI), which so
    builds no model validator at all; errors are raised as by `call_once`."""
    base_url = base_url.rstrip("/")
    method, path, sent = _request_of(route, body, params, query)
    try:
        reply = request_once(Request(method, base_url + path, sent, _auth(token)), timeout)
    except NoAnswer as error:
        raise _unreachable(base_url, method, path, error) from None
    return _data_of(route, reply)


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _request_of(
    route: Route[Any],
    body: BaseModel | None,
    params: Mapping[str, str] | None,
    query: Mapping[str, int | str] | None,
) -> tuple[str, str, bytes | None]:
    """The method, path and encoded body of one call of `route`."""
    sent = _fields(body)
    if sent is None and route.method not in _READING_METHODS:
        sent = {}
    return route.method, route.url(params or {}, query), _encoded(sent)


def _answer_of(route: Route[R], reply: Reply) -> R:
    """The route's response model of `reply` (the bytes as sent for a binary route), or the
    error it carries."""
    return _validated(route, _data_of(route, reply))


def _data_of(route: Route[Any], reply: Reply) -> Any:
    """What `reply` carries, decoded by its type; the error it carries raised."""
    if reply.content_type == JSON:
        data = orjson.loads(reply.body)
    elif route.content_type in BINARY_TYPES and reply.status < 400:
        data = reply.body
    else:
        data = reply.body.decode(reply.charset, "replace")
    if reply.status >= 400:
        raise _error(reply.status, data)
    return data


def _validated(route: Route[R], data: Any) -> R:
    model = route.response
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model.model_validate(data)
    if model is not None and is_dataclass(model):
        # a service's own result type (PipelineStat): checked as it is, no wire copy of it
        validated: R = TypeAdapter(model).validate_python(data)
        return validated
    answer: R = data
    return answer


def declare_request(name: str, settings: Mapping[str, Any], consume: bool) -> Declare:
    """A Declare of `settings` (a `jobs.pipelines.NAME` block, checked here); settings left
    out stay unset, for the server to fill in."""
    try:
        return declare_request_model().model_validate(
            {**settings, "name": name, "consume": consume}
        )
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        raise InvalidPipeline(f"pipeline {name!r}: {where}: {problem['msg']}") from None


def _fields(body: BaseModel | None) -> dict[str, Any] | None:
    """The fields given, none left empty: the server's own defaults fill in the rest."""
    if body is None:
        return None
    return body.model_dump(mode="json", exclude_unset=True, exclude_none=True)


def _encoded(body: Any) -> bytes | None:
    if body is None:
        return None
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError as error:
        raise InvalidJob(f"the request holds text that is not valid Unicode: {error}") from None


def _unreachable(base_url: str, method: str, path: str, error: NoAnswer) -> ApiUnavailable:
    """No answer: the server did nothing if the request never left (no connection, or none
    in time); a change that may have been sent may have been done, or may be done yet."""
    if not error.sent or method.upper() in _READING_METHODS:
        return ApiUnavailable(f"cannot reach {base_url}: {error}")
    return RequestOutcomeUnknown(
        f"no answer from {base_url} to {method.upper()} {path}, which it may have carried out"
        f" or may still: {error}"
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
