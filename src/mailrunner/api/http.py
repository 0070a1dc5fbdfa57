"""The management HTTP API: Jobs RPC 1:1 with JobsService, workers, connections, health,
metrics, and /openapi.json generated from the same route table that aiohttp serves, so the
document cannot drift from the server.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from pydantic import BaseModel, TypeAdapter, ValidationError

from mailrunner.api.bodies import read_body
from mailrunner.api.faults_http import FaultsApi
from mailrunner.api.inbox_http import InboxApi
from mailrunner.api.openapi import openapi_document
from mailrunner.api.routes import JSON, ROUTES, UI_ROUTES, Route
from mailrunner.api.schemas import (
    MAX_LIST_LIMIT,
    ConnectionsResponse,
    ConnectionWire,
    CountResponse,
    Declare,
    DeclareRequest,
    DeclareResponse,
    DestroyRequest,
    EmptyRequest,
    ErrorResponse,
    FailedJobWire,
    FailedResponse,
    HealthResponse,
    IdsRequest,
    JobWire,
    OkResponse,
    PeekResponse,
    PipelinesResponse,
    PoolsResponse,
    PushBatchRequest,
    PushBatchResponse,
    PushRequest,
    PushResponse,
    PushResultWire,
    WorkerResponse,
    WorkersResponse,
    WorkerWire,
)
from mailrunner.api.trust import DeclarePolicy, RequestGuard, Sessions
from mailrunner.api.ui_http import UiHandlers
from mailrunner.config import PipelineConfig, RpcConfig, split_host_port
from mailrunner.errors import (
    ApiError,
    DriverError,
    InvalidJob,
    InvalidPipeline,
    MailrunnerError,
    NotFound,
    PipelineConflict,
    PipelineNotFound,
    PoolError,
    PoolLimit,
    PushTimeout,
)
from mailrunner.inbox.errors import InboxError, InboxLocked, QueryError
from mailrunner.inbox.feed import Feed
from mailrunner.inbox.service import Inbox
from mailrunner.jobs.deadline import CALLER_MARGIN, DEFAULT_PUSH_TIMEOUT
from mailrunner.jobs.service import JobsService
from mailrunner.metrics import QUEUE_STATES, GaugeSnapshot, Metrics, worker_counts
from mailrunner.pool.pool import WorkerInfo, WorkerPool
from mailrunner.smtp.faults import FaultBook
from mailrunner.smtp.server import SmtpServer

log = structlog.get_logger("mailrunner.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PIPELINE_SETTINGS: TypeAdapter[PipelineConfig] = TypeAdapter(PipelineConfig)
STATS_INTERVAL = 2.0
"""Seconds between two `stats` events on /events (while anyone listens)."""
_STATUS_OF: tuple[tuple[type[Exception], int], ...] = (
    (PipelineNotFound, 404),
    (PipelineConflict, 409),
    (PoolLimit, 409),
    (InvalidJob, 422),
    (InvalidPipeline, 422),
    (QueryError, 422),
    (InboxLocked, 503),
    (InboxError, 503),
    (DriverError, 503),
    (PoolError, 503),
)
"""The one table from errors to HTTP statuses; the message goes to the client, never a trace."""


def status_of(error: Exception) -> int:
    if isinstance(error, ApiError):
        return error.status
    for kind, status in _STATUS_OF:
        if isinstance(error, kind):
            return status
    return 500


def _json(model: BaseModel, status: int = 200) -> web.Response:
    return web.json_response(model.model_dump(mode="json"), status=status)


def _error(status: int, error: Exception | str, kind: str | None = None) -> web.Response:
    """The error body; a query error says where in `q` it is (`position`), no other has it."""
    position = error.position if isinstance(error, QueryError) else None
    body = ErrorResponse(error=str(error), type=kind or type(error).__name__, position=position)
    return web.json_response(body.model_dump(mode="json", exclude_none=True), status=status)


def _time_left(push_timeout: float | None, arrived: float) -> float:
    """The caller's push_timeout counts from when it sent the request; the node counts from
    the request's arrival, takes off what reading it cost and CALLER_MARGIN for its way here,
    and so gives up before the caller does: a caller that answered 451 finds nothing stored."""
    if push_timeout is None:
        return DEFAULT_PUSH_TIMEOUT
    left = push_timeout - CALLER_MARGIN - (time.monotonic() - arrived)
    if left <= 0:
        raise PushTimeout(f"push_timeout ({push_timeout}s) ran out while the request was read")
    return left


def _limit(request: web.Request, default: int) -> int:
    """Refused, not cut, beyond MAX_LIST_LIMIT: a caller that asked for more and got fewer
    would take them for all there is."""
    text = request.query.get("limit", str(default))
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIST_LIMIT:
        raise InvalidJob(f"limit must be an integer from 1 to {MAX_LIST_LIMIT}")
    return int(text)


def _route_path(request: web.Request) -> str:
    """The route's path as the table writes it (`{name}` unfilled); the request's own path
    when no route matched."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else request.path


class ApiServer:
    """Serves the API for one mailrunner process; owns its aiohttp runner."""

    def __init__(
        self,
        config: RpcConfig,
        *,
        jobs: JobsService,
        smtp: SmtpServer,
        pools: dict[str, WorkerPool],
        metrics: Metrics,
        consumed: list[str],
        max_request: int,
        declare_policy: DeclarePolicy,
        inbox: Inbox | None = None,
        faults: FaultBook | None = None,
    ) -> None:
        self._config = config
        self._guard = RequestGuard(config)
        self._sessions = Sessions()
        self._declare_policy = declare_policy
        self._jobs = jobs
        self._smtp = smtp
        self._pools = pools
        self._metrics = metrics
        self._consumed = consumed
        self._max_request = max_request
        self._runner: web.AppRunner | None = None
        self.routes = ROUTES
        self._feed = inbox.feed if inbox is not None else Feed()
        self._feed.every("stats", STATS_INTERVAL, self._pipeline_stats)
        self._handlers = (
            self,
            InboxApi(inbox, self._feed),
            FaultsApi(faults),
            UiHandlers(config.token, self._guard, self._sessions),
        )
        self._by_path = {(route.method, route.path): route for route in (*ROUTES, *UI_ROUTES)}

    # --- life cycle --------------------------------------------------------------------------

    def application(self) -> web.Application:
        app = web.Application(
            client_max_size=self._max_request,
            middlewares=[self._errors, self._trusted, self._auth, self._json_only],
        )
        for route in (*self.routes, *UI_ROUTES):
            app.router.add_route(route.method, route.path, self._handler(route))
        return app

    def _handler(self, route: Route[Any]) -> Handler:
        """The method named as the route, on this server or its inbox or UI handlers."""
        for owner in self._handlers:
            handler: Handler | None = getattr(owner, route.name, None)
            if handler is not None:
                return handler
        raise LookupError(f"no handler for route {route.name!r}")

    async def start(self) -> None:
        self._runner = web.AppRunner(self.application(), access_log=None)
        await self._runner.setup()
        host, port = split_host_port(self._config.listen)
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        log.info("api listening", addr=f"http://{self._config.listen}")

    @property
    def address(self) -> tuple[str, int]:
        assert self._runner is not None
        host, port = self._runner.addresses[0][:2]
        return str(host), int(port)

    async def stop(self) -> None:
        """Stop serving; /events streams end at once instead of holding the shutdown."""
        await self._feed.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- middlewares -------------------------------------------------------------------------

    @web.middleware
    async def _trusted(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self._guard.check_sender(request)
        return await handler(request)

    def _route(self, request: web.Request) -> Route[Any] | None:
        return self._by_path.get((request.method, _route_path(request)))

    @web.middleware
    async def _json_only(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = self._route(request)
        self._guard.check_media_type(request, route.accepts if route is not None else JSON)
        return await handler(request)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The bearer token, or the web UI's session cookie once Host and Origin show that
        no other site's page sent the request."""
        token = self._config.token
        route = self._route(request)
        if token is None or (route is not None and route.public):
            return await handler(request)
        sent = request.headers.get("Authorization", "")
        expected = f"Bearer {token}".encode()
        if hmac.compare_digest(sent.encode("utf-8", "replace"), expected):
            return await handler(request)
        session = request.cookies.get(Sessions.cookie_name(request))
        if session is not None:
            self._guard.check_page_sender(request)
            if self._sessions.valid(session):
                return await handler(request)
        return _error(401, "a bearer token is required (rpc.token)", "Unauthorized")

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as error:
            return _error(error.status, error.reason, type(error).__name__)
        except MailrunnerError as error:
            status = status_of(error)
            if status >= 500:
                log.warning("api call failed", path=request.path, error=str(error))
            return _error(status, error)
        except (ValueError, TypeError) as error:
            return _error(422, error)
        except Exception:
            log.exception("api internal error", path=request.path)
            return _error(500, "internal error, see the server log", "InternalError")

    # --- jobs --------------------------------------------------------------------------------

    async def push(self, request: web.Request) -> web.Response:
        """Answers once the driver has the outcome. A sqlite push whose transaction began before
        its deadline waits for the COMMIT, up to the busy timeout past it: the handler sets no
        bound of its own and runs on when the caller hangs up, so the job is stored even if the
        caller gave up first (its ApiClient raises RequestOutcomeUnknown, and an SMTP ingress
        answers 451 and keeps the email's attachment files)."""
        arrived = time.monotonic()
        body: PushRequest = await read_body(request, PushRequest)
        push_timeout = _time_left(body.push_timeout, arrived)
        await self._jobs.push(body.job.to_job(), push_timeout=push_timeout)
        return _json(PushResponse(id=body.job.id))

    async def push_batch(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        body: PushBatchRequest = await read_body(request, PushBatchRequest)
        push_timeout = _time_left(body.push_timeout, arrived)
        results = await self._jobs.push_batch(
            [job.to_job() for job in body.jobs], push_timeout=push_timeout
        )
        wire = [PushResultWire(id=r.id, error=r.error) for r in results]
        return _json(PushBatchResponse(results=wire))

    async def list_pipelines(self, request: web.Request) -> web.Response:
        return _json(PipelinesResponse(pipelines=self._jobs.list_pipelines()))

    async def declare(self, request: web.Request) -> web.Response:
        body: Declare = await read_body(request, DeclareRequest)
        try:
            settings = PIPELINE_SETTINGS.validate_python(body.settings())
        except ValidationError as error:
            raise InvalidPipeline(f"pipeline {body.name!r}: {error.errors()[0]['msg']}") from None
        await asyncio.to_thread(self._declare_policy.check, body.name, settings)
        created = await self._jobs.declare(body.name, settings, consume=body.consume)
        return _json(DeclareResponse(pipeline=body.name, created=created))

    async def destroy(self, request: web.Request) -> web.Response:
        body: DestroyRequest = await read_body(request, DestroyRequest)
        await self._jobs.destroy(request.match_info["name"], purge=body.purge)
        return _json(OkResponse())

    async def pause(self, request: web.Request) -> web.Response:
        await read_body(request, EmptyRequest)
        await self._jobs.pause(request.match_info["name"])
        return _json(OkResponse())

    async def resume(self, request: web.Request) -> web.Response:
        await read_body(request, EmptyRequest)
        await self._jobs.resume(request.match_info["name"])
        return _json(OkResponse())

    async def stat(self, request: web.Request) -> web.Response:
        stat = await self._jobs.stat(request.match_info["name"])
        return web.json_response(stat.to_dict())

    async def peek(self, request: web.Request) -> web.Response:
        jobs = await self._jobs.peek(request.match_info["name"], _limit(request, 10))
        return _json(PeekResponse(jobs=[JobWire.from_job(job) for job in jobs]))

    async def failed(self, request: web.Request) -> web.Response:
        failed = await self._jobs.list_failed(request.match_info["name"], _limit(request, 100))
        return _json(FailedResponse(failed=[FailedJobWire.from_failed(f) for f in failed]))

    async def retry_failed(self, request: web.Request) -> web.Response:
        body: IdsRequest = await read_body(request, IdsRequest)
        count = await self._jobs.retry_failed(request.match_info["name"], body.ids)
        return _json(CountResponse(count=count))

    async def purge_failed(self, request: web.Request) -> web.Response:
        body: IdsRequest = await read_body(request, IdsRequest)
        count = len(await self._jobs.purge_failed(request.match_info["name"], body.ids))
        return _json(CountResponse(count=count))

    # --- workers and connections -------------------------------------------------------------

    def _pool(self, request: web.Request) -> WorkerPool:
        name = request.match_info["pool"]
        pool = self._pools.get(name)
        if pool is None:
            running = ", ".join(sorted(self._pools)) or "none"
            raise NotFound(f"no {name!r} worker pool runs here (running: {running})")
        return pool

    async def pools(self, request: web.Request) -> web.Response:
        return _json(PoolsResponse(pools=sorted(self._pools)))

    async def workers(self, request: web.Request) -> web.Response:
        pool = self._pool(request)
        workers = [WorkerWire.model_validate(info, from_attributes=True) for info in pool.workers()]
        return _json(WorkersResponse(pool=pool.name, workers=workers))

    async def add_worker(self, request: web.Request) -> web.Response:
        await read_body(request, EmptyRequest)
        pool = self._pool(request)
        return _worker_response(pool, await pool.add_worker())

    async def remove_worker(self, request: web.Request) -> web.Response:
        await read_body(request, EmptyRequest)
        pool = self._pool(request)
        return _worker_response(pool, await pool.remove_worker())

    async def reset_workers(self, request: web.Request) -> web.Response:
        await read_body(request, EmptyRequest)
        await self._pool(request).reset()
        return _json(OkResponse())

    async def connections(self, request: web.Request) -> web.Response:
        listed = [
            ConnectionWire.model_validate(info, from_attributes=True)
            for info in self._smtp.connections
        ]
        return _json(ConnectionsResponse(connections=listed))

    async def close_connection(self, request: web.Request) -> web.Response:
        await read_body(request, EmptyRequest)
        connection_id = request.match_info["uuid"]
        if not self._smtp.close_connection(connection_id):
            raise NotFound(f"no open SMTP connection {connection_id!r}")
        return _json(OkResponse())

    # --- health, metrics, openapi ------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        known = set(self._jobs.list_pipelines())
        pipelines = {
            name: name in known and self._jobs.pipeline(name).consuming for name in self._consumed
        }
        ready = self._smtp.listening and all(pipelines.values())
        body = HealthResponse(
            status="ready" if ready else "not ready", smtp=self._smtp.listening, pipelines=pipelines
        )
        return _json(body, 200 if ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        exposition = self._metrics.exposition(await self._gauges())
        return web.Response(body=exposition, content_type="text/plain", charset="utf-8")

    async def _gauges(self) -> GaugeSnapshot:
        """The gauges as they are now; a pipeline whose driver cannot say is left out."""
        queues = {}
        for name in self._jobs.list_pipelines():
            try:
                stat = await self._jobs.stat(name)
            except MailrunnerError:
                continue
            queues[name] = {state: getattr(stat, state) for state in QUEUE_STATES}
        workers = {
            pool.name: worker_counts(info.state for info in pool.workers())
            for pool in self._pools.values()
        }
        return GaugeSnapshot(len(self._smtp.connections), queues, workers)

    async def _pipeline_stats(self) -> dict[str, Any]:
        """The `stats` event: every pipeline's stat as `GET …/stat` answers it; a pipeline
        whose driver cannot say is left out of this one."""
        stats = []
        for name in self._jobs.list_pipelines():
            try:
                stat = await self._jobs.stat(name)
            except MailrunnerError:
                continue
            stats.append(stat.to_dict())
        return {"pipelines": stats}

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document(self.routes))


def _worker_response(pool: WorkerPool, info: WorkerInfo) -> web.Response:
    worker = WorkerWire.model_validate(info, from_attributes=True)
    return _json(WorkerResponse(pool=pool.name, worker=worker))
