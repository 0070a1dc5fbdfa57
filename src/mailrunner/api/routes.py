"""The management API's routes, written once as data: the server's router, the OpenAPI
document and ApiClient all read this table, so a path, a method or a model cannot differ
between them. Pure data: no web framework here, so a client never loads the server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from pydantic import BaseModel

from mailrunner.api.schemas import (
    ConnectionsResponse,
    CountResponse,
    DeclareRequest,
    DeclareResponse,
    DestroyRequest,
    EmptyRequest,
    FailedResponse,
    HealthResponse,
    IdsRequest,
    OkResponse,
    PeekResponse,
    PipelinesResponse,
    PushBatchRequest,
    PushBatchResponse,
    PushRequest,
    PushResponse,
    StatResponse,
    WorkerResponse,
    WorkersResponse,
)

JSON = "application/json"
R = TypeVar("R")


@dataclass(frozen=True)
class Route(Generic[R]):
    """One operation: `name` is its OpenAPI operationId and the server's handler method;
    `public` routes need no bearer token; `query` names the integer `limit`-like parameters."""

    method: str
    path: str
    name: str
    summary: str
    response: type[R] | None
    request: type[BaseModel] | None = None
    query: tuple[str, ...] = ()
    public: bool = False
    content_type: str = JSON

    @property
    def parameters(self) -> list[str]:
        """The path's `{name}` parts, in order."""
        return [part[1:-1] for part in self.path.split("/") if part.startswith("{")]

    def url(self, params: Mapping[str, str], query: Mapping[str, Any] | None = None) -> str:
        """The path with its parameters filled in, each quoted whole (a pipeline may be named
        `a/b`), and the query appended."""
        path = self.path
        for name in self.parameters:
            path = path.replace(f"{{{name}}}", quote(params[name], safe=""))
        if query:
            path += "?" + "&".join(f"{key}={quote(str(value))}" for key, value in query.items())
        return path


_PIPELINE = "/jobs/pipelines/{name}"

PUSH = Route(
    "POST", "/jobs/push", "push", "Push one job; 200 once stored", PushResponse, PushRequest
)
PUSH_BATCH = Route(
    "POST", "/jobs/push_batch", "push_batch", "Push jobs", PushBatchResponse, PushBatchRequest
)
LIST_PIPELINES = Route(
    "GET", "/jobs/pipelines", "list_pipelines", "List pipelines", PipelinesResponse
)
DECLARE = Route(
    "POST", "/jobs/pipelines", "declare", "Declare a pipeline", DeclareResponse, DeclareRequest
)
DESTROY = Route(
    "POST", f"{_PIPELINE}/destroy", "destroy", "Destroy a pipeline", OkResponse, DestroyRequest
)
PAUSE = Route("POST", f"{_PIPELINE}/pause", "pause", "Pause consuming", OkResponse, EmptyRequest)
RESUME = Route(
    "POST", f"{_PIPELINE}/resume", "resume", "Resume consuming", OkResponse, EmptyRequest
)
STAT = Route("GET", f"{_PIPELINE}/stat", "stat", "Pipeline stat", StatResponse)
PEEK = Route(
    "GET", f"{_PIPELINE}/peek", "peek", "Jobs in serving order", PeekResponse, query=("limit",)
)
FAILED = Route(
    "GET", f"{_PIPELINE}/failed", "failed", "The failed list", FailedResponse, query=("limit",)
)
RETRY_FAILED = Route(
    "POST",
    f"{_PIPELINE}/failed/retry",
    "retry_failed",
    "Retry failed jobs",
    CountResponse,
    IdsRequest,
)
PURGE_FAILED = Route(
    "POST",
    f"{_PIPELINE}/failed/purge",
    "purge_failed",
    "Purge failed jobs",
    CountResponse,
    IdsRequest,
)
WORKERS = Route("GET", "/workers/{pool}", "workers", "List workers", WorkersResponse)
ADD_WORKER = Route(
    "POST",
    "/workers/{pool}/add",
    "add_worker",
    "Add a worker, up to max_workers",
    WorkerResponse,
    EmptyRequest,
)
REMOVE_WORKER = Route(
    "POST",
    "/workers/{pool}/remove",
    "remove_worker",
    "Remove a worker",
    WorkerResponse,
    EmptyRequest,
)
RESET_WORKERS = Route(
    "POST",
    "/workers/{pool}/reset",
    "reset_workers",
    "Replace every worker",
    OkResponse,
    EmptyRequest,
)
CONNECTIONS = Route(
    "GET", "/connections", "connections", "Open SMTP connections", ConnectionsResponse
)
CLOSE_CONNECTION = Route(
    "POST",
    "/connections/{uuid}/close",
    "close_connection",
    "Close a connection",
    OkResponse,
    EmptyRequest,
)
HEALTH = Route(
    "GET",
    "/health",
    "health",
    "Ready when SMTP and consumed pipelines are up",
    HealthResponse,
    public=True,
)
METRICS: Route[str] = Route(
    "GET", "/metrics", "metrics", "Prometheus metrics", None, content_type="text/plain"
)
OPENAPI: Route[dict[str, Any]] = Route(
    "GET", "/openapi.json", "openapi", "This document", None, public=True
)

ROUTES: tuple[Route[Any], ...] = (
    PUSH,
    PUSH_BATCH,
    LIST_PIPELINES,
    DECLARE,
    DESTROY,
    PAUSE,
    RESUME,
    STAT,
    PEEK,
    FAILED,
    RETRY_FAILED,
    PURGE_FAILED,
    WORKERS,
    ADD_WORKER,
    REMOVE_WORKER,
    RESET_WORKERS,
    CONNECTIONS,
    CLOSE_CONNECTION,
    HEALTH,
    METRICS,
    OPENAPI,
)
"""Every route, in the order /openapi.json lists them."""
