"""The management API's routes, written once as data: the server's router, the OpenAPI
document and ApiClient all read this table, so a path, a method or a model cannot differ
between them. Pure data: no web framework here, so a client never loads the server.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from pydantic import BaseModel

from mailrunner.api import schemas
from mailrunner.faults import FaultRule
from mailrunner.jobs.model import PipelineStat

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
EVENT_STREAM = "text/event-stream"
HTML = "text/html"
RFC822 = "message/rfc822"
BINARY = "application/octet-stream"
BINARY_TYPES = frozenset({RFC822, BINARY})
"""Answers a client hands on as the bytes sent, never decoded as text."""
R = TypeVar("R")
Body = type[BaseModel] | Callable[[], type[BaseModel]]
"""A request's model, or the function that makes it on first use (DECLARE's)."""


@dataclass(frozen=True)
class Route(Generic[R]):
    """One operation: `name` is its OpenAPI operationId and the server's handler method;
    `public` routes need no bearer token; `query` names its query parameters (their schemas
    are openapi.py's, by name); `accepts` is the media type of a POST's body."""

    method: str
    path: str
    name: str
    summary: str
    response: type[R] | None
    body: Body | None = None
    query: tuple[str, ...] = ()
    public: bool = False
    content_type: str = JSON
    accepts: str = JSON

    @property
    def request(self) -> type[BaseModel] | None:
        """The model of the request's body, if it takes one."""
        if self.body is None or isinstance(self.body, type):
            return self.body
        return self.body()

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


def _get(path: str, name: str, summary: str, response: type[R], **more: Any) -> Route[R]:
    return Route("GET", path, name, summary, response, **more)


def _post(path: str, name: str, summary: str, response: type[R], request: Body) -> Route[R]:
    """A change: every POST takes a JSON body (`schemas.EmptyRequest` when it takes none)."""
    return Route("POST", path, name, summary, response, request)


def _delete(path: str, name: str, summary: str, response: type[R], **more: Any) -> Route[R]:
    """A deletion: a JSON body like a POST's (`{}`: the UI sends one, the server ignores it)."""
    return Route("DELETE", path, name, summary, response, schemas.EmptyRequest, **more)


_PIPELINE = "/jobs/pipelines/{name}"
_COUNT = schemas.CountResponse
_OK = schemas.OkResponse
_NONE = schemas.EmptyRequest
_WORKER = schemas.WorkerResponse

PUSH = _post(
    "/jobs/push", "push", "Push one job; 200 once stored", schemas.PushResponse, schemas.PushRequest
)
PUSH_BATCH = _post(
    "/jobs/push_batch",
    "push_batch",
    "Push jobs",
    schemas.PushBatchResponse,
    schemas.PushBatchRequest,
)
LIST_PIPELINES = _get(
    "/jobs/pipelines", "list_pipelines", "List pipelines", schemas.PipelinesResponse
)
DECLARE = _post(
    "/jobs/pipelines",
    "declare",
    "Declare a pipeline",
    schemas.DeclareResponse,
    schemas.declare_request_model,
)
DESTROY = _post(
    f"{_PIPELINE}/destroy", "destroy", "Destroy a pipeline", _OK, schemas.DestroyRequest
)
PAUSE = _post(f"{_PIPELINE}/pause", "pause", "Pause consuming", _OK, _NONE)
RESUME = _post(f"{_PIPELINE}/resume", "resume", "Resume consuming", _OK, _NONE)
STAT = _get(f"{_PIPELINE}/stat", "stat", "Pipeline stat", PipelineStat)
PEEK = _get(
    f"{_PIPELINE}/peek", "peek", "Jobs in serving order", schemas.PeekResponse, query=("limit",)
)
FAILED = _get(
    f"{_PIPELINE}/failed", "failed", "The failed list", schemas.FailedResponse, query=("limit",)
)
RETRY_FAILED = _post(
    f"{_PIPELINE}/failed/retry", "retry_failed", "Retry failed jobs", _COUNT, schemas.IdsRequest
)
PURGE_FAILED = _post(
    f"{_PIPELINE}/failed/purge", "purge_failed", "Purge failed jobs", _COUNT, schemas.IdsRequest
)
POOLS = _get("/workers", "pools", "The worker pools this server runs", schemas.PoolsResponse)
WORKERS = _get("/workers/{pool}", "workers", "List workers", schemas.WorkersResponse)
ADD_WORKER = _post(
    "/workers/{pool}/add", "add_worker", "Add a worker, up to max_workers", _WORKER, _NONE
)
REMOVE_WORKER = _post("/workers/{pool}/remove", "remove_worker", "Remove a worker", _WORKER, _NONE)
RESET_WORKERS = _post("/workers/{pool}/reset", "reset_workers", "Replace every worker", _OK, _NONE)
CONNECTIONS = _get(
    "/connections", "connections", "Open SMTP connections", schemas.ConnectionsResponse
)
CLOSE_CONNECTION = _post(
    "/connections/{uuid}/close", "close_connection", "Close a connection", _OK, _NONE
)
HEALTH = _get(
    "/health",
    "health",
    "Ready when SMTP and consumed pipelines are up",
    schemas.HealthResponse,
    public=True,
)
METRICS: Route[str] = Route(
    "GET", "/metrics", "metrics", "Prometheus metrics", None, content_type="text/plain"
)
OPENAPI: Route[dict[str, Any]] = Route(
    "GET", "/openapi.json", "openapi", "This document", None, public=True
)

_MESSAGE = "/messages/{id}"
LIST_MESSAGES = _get(
    "/messages",
    "list_messages",
    "Messages in the inbox, newest first; q is a search query (422 with its position)",
    schemas.MessagesResponse,
    query=("q", "since", "limit", "offset"),
)
WAIT_MESSAGES = _get(
    "/messages/wait",
    "wait_messages",
    "The oldest message received since `since` that q selects, as soon as it is stored;"
    " after `timeout` seconds, none and what did arrive",
    schemas.WaitResponse,
    query=("q", "since", "timeout"),
)
CLEAR_MESSAGES = _delete(
    "/messages", "clear_messages", "Delete all messages, or those q selects", _COUNT, query=("q",)
)
GET_MESSAGE: Route[dict[str, Any]] = Route(
    "GET", _MESSAGE, "get_message", "A message's EMAIL_RECEIVED event, plus read", None
)
DELETE_MESSAGE = _delete(_MESSAGE, "delete_message", "Delete a message", _OK)
MARK_READ = _post(f"{_MESSAGE}/read", "mark_read", "Mark a message read", _OK, _NONE)
MARK_UNREAD = _post(f"{_MESSAGE}/unread", "mark_unread", "Mark a message unread", _OK, _NONE)
RAW_MESSAGE: Route[bytes] = Route(
    "GET", f"{_MESSAGE}/raw", "raw_message", "The bytes received", None, content_type=RFC822
)
MESSAGE_HTML: Route[str] = Route(
    "GET",
    f"{_MESSAGE}/html",
    "message_html",
    "The HTML body for a sandboxed frame; cid: images inline, remote ones only with remote=1",
    None,
    query=("remote",),
    content_type=HTML,
)
ATTACHMENT: Route[bytes] = Route(
    "GET",
    f"{_MESSAGE}/attachments/{{index}}",
    "attachment",
    "An attachment's bytes, by its 0-based index",
    None,
    content_type=BINARY,
)
EVENTS: Route[str] = Route(
    "GET",
    "/events",
    "events",
    "Server-sent events: message (a summary), deleted ({ids}), stats ({pipelines}) every 2 s",
    None,
    content_type=EVENT_STREAM,
)

FAULTS = "/faults"
ADD_FAULT = _post(FAULTS, "add_fault", "Add a fault rule", schemas.FaultAdded, FaultRule)
LIST_FAULTS = _get(FAULTS, "list_faults", "Fault rules, with matches left", schemas.FaultsResponse)
DELETE_FAULT = _delete(f"{FAULTS}/{{id}}", "delete_fault", "Remove a fault rule", _OK)
CLEAR_FAULTS = _delete(FAULTS, "clear_faults", "Remove every fault rule", _COUNT)

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
    POOLS,
    WORKERS,
    ADD_WORKER,
    REMOVE_WORKER,
    RESET_WORKERS,
    CONNECTIONS,
    CLOSE_CONNECTION,
    HEALTH,
    METRICS,
    OPENAPI,
    LIST_MESSAGES,
    CLEAR_MESSAGES,
    WAIT_MESSAGES,  # before GET_MESSAGE, whose /messages/{id} would take "wait"
    GET_MESSAGE,
    DELETE_MESSAGE,
    MARK_READ,
    MARK_UNREAD,
    RAW_MESSAGE,
    MESSAGE_HTML,
    ATTACHMENT,
    EVENTS,
    ADD_FAULT,
    LIST_FAULTS,
    DELETE_FAULT,
    CLEAR_FAULTS,
)
"""Every route of the API, in the order /openapi.json lists them."""

UI_PAGE: Route[str] = Route(
    "GET", "/", "ui_page", "The web UI", None, public=True, content_type=HTML
)
UI_ASSET: Route[str] = Route(
    "GET", "/ui/{file}", "ui_asset", "A file of the web UI", None, public=True, content_type=HTML
)
UI_LOGIN_PAGE: Route[str] = Route(
    "GET", "/ui/login", "ui_login_page", "The token form", None, public=True, content_type=HTML
)
UI_LOGIN: Route[str] = Route(
    "POST",
    "/ui/login",
    "ui_login",
    "Trade the token for a session cookie",
    None,
    public=True,
    content_type=HTML,
    accepts=FORM,
)
UI_LOGOUT = Route("POST", "/ui/logout", "ui_logout", "End the session", _OK, _NONE, public=True)
UI_ROUTES: tuple[Route[Any], ...] = (UI_PAGE, UI_LOGIN_PAGE, UI_LOGIN, UI_LOGOUT, UI_ASSET)
"""The web UI's pages and files: served beside the API, not part of its document. The login
page comes before the asset pattern that would match it too."""
