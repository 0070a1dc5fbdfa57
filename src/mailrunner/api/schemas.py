"""The management API's wire format, as pydantic models: they validate requests and are the
source of the request and response schemas in /openapi.json.

A job on the wire follows RoadRunner's shape: `{"id", "job", "payload" | "payload_base64",
"headers", "options": {"pipeline", "priority", "delay", "auto_ack"}}`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    create_model,
    model_validator,
)

from mailrunner.faults import FaultRule
from mailrunner.jobs.deadline import (
    CALLER_MARGIN,
    DEFAULT_PUSH_TIMEOUT,
    MAX_PUSH_TIMEOUT,
    MIN_PUSH_TIMEOUT,
)
from mailrunner.jobs.model import MAX_DELAY, FailedJob, Job, JobOptions

MAX_LIST_LIMIT = 1000
"""`peek` and `failed` return at most this many jobs per call: each may be an email's whole
event, so one request cannot ask the server to load its whole store into memory."""


class Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)


class JobOptionsWire(Wire):
    pipeline: str = Field(min_length=1)
    priority: int = Field(default=0, ge=0, le=2**31)
    delay: float = Field(
        default=0.0,
        ge=0,
        le=MAX_DELAY,
        description="Seconds before the job is due (30 days at most).",
    )
    auto_ack: bool = False


class JobWire(Wire):
    id: str = Field(min_length=1, max_length=1024)
    job: str = Field(min_length=1, max_length=1024)
    payload: str | None = None
    payload_base64: str | None = None
    headers: dict[str, list[str]] = {}
    options: JobOptionsWire
    _decoded: bytes | None = PrivateAttr(default=None)
    """payload_base64 decoded once, while validating (an email's event can be megabytes)."""

    @model_validator(mode="after")
    def _one_payload(self) -> JobWire:
        if self.payload is not None and self.payload_base64 is not None:
            raise ValueError("give payload or payload_base64, not both")
        if self.payload_base64 is not None:
            try:
                self._decoded = base64.b64decode(self.payload_base64, validate=True)
            except (binascii.Error, ValueError) as error:
                raise ValueError(f"payload_base64 is not base64: {error}") from None
        return self

    def to_job(self) -> Job:
        if self._decoded is not None:
            payload = self._decoded
        else:
            payload = (self.payload or "").encode("utf-8")
        options = JobOptions(
            pipeline=self.options.pipeline,
            priority=self.options.priority,
            delay=self.options.delay,
            auto_ack=self.options.auto_ack,
        )
        return Job(self.id, self.job, payload, options, dict(self.headers))

    @classmethod
    def from_job(cls, job: Job, *, as_base64: bool = False) -> JobWire:
        """`payload` when it is UTF-8 text, else (or when asked) `payload_base64`."""
        text: str | None = None
        if not as_base64:
            with contextlib.suppress(UnicodeDecodeError):
                text = job.payload.decode("utf-8")
        encoded = None if text is not None else base64.b64encode(job.payload).decode("ascii")
        return cls(
            id=job.id,
            job=job.name,
            payload=text,
            payload_base64=encoded,
            headers=job.headers,
            options=JobOptionsWire(
                pipeline=job.options.pipeline,
                priority=job.options.priority,
                delay=job.options.delay,
                auto_ack=job.options.auto_ack,
            ),
        )


_PUSH_TIMEOUT = Field(
    default=None,
    ge=MIN_PUSH_TIMEOUT,
    le=MAX_PUSH_TIMEOUT,
    description=f"Seconds the caller waits from sending the request (default"
    f" {DEFAULT_PUSH_TIMEOUT:g}). The node gives up storing {CALLER_MARGIN:g} s before that,"
    " counted from the request's arrival, and then stores nothing.",
)


class PushRequest(Wire):
    job: JobWire
    push_timeout: float | None = _PUSH_TIMEOUT


class PushBatchRequest(Wire):
    jobs: list[JobWire] = Field(min_length=1)
    push_timeout: float | None = _PUSH_TIMEOUT


class PushResponse(Wire):
    id: str


class PushResultWire(Wire):
    id: str
    error: str | None


class PushBatchResponse(Wire):
    results: list[PushResultWire]


class PipelinesResponse(Wire):
    pipelines: list[str]


class Declare(Wire):
    """What a Declare names besides the pipeline's settings; the settings themselves are
    the pipeline model's (see DeclareRequest)."""

    name: str = Field(min_length=1, max_length=200)
    consume: bool = False

    def settings(self) -> dict[str, Any]:
        """Only the settings the caller gave: the pipeline model fills in the rest, so its
        defaults are the only ones."""
        return self.model_dump(exclude={"name", "consume"}, exclude_unset=True)


@functools.cache
def declare_request_model() -> type[Declare]:
    """The same settings as a `jobs.pipelines.NAME` block of the YAML file, taken from the
    pipeline models: the settings every driver shares, with their bounds and defaults, then
    the driver's name and its `config` (read as that driver's model once `driver` is known).

    Made on first use, not at import: a client command that declares nothing (`jobs list`)
    then never loads the configuration models.
    """
    # here, not at the top: see above
    from mailrunner.config import DRIVER_NAMES, PipelineConfig  # noqa: PLC0415

    models = get_args(get_args(PipelineConfig)[0])
    shared = set.intersection(*(set(model.model_fields) for model in models))
    fields: dict[str, Any] = {
        "driver": (str, Field(json_schema_extra={"enum": list(DRIVER_NAMES)})),
        **{
            name: (field.annotation, field)
            for name, field in models[0].model_fields.items()
            if name in shared - {"driver", "config"}
        },
        "config": (dict[str, Any], {}),
    }
    return create_model(
        "DeclareRequest",
        __base__=Declare,
        __doc__="Declare a pipeline: the settings of a `jobs.pipelines.NAME` block of the YAML"
        " file; a setting left out takes that block's default.",
        **fields,
    )


if TYPE_CHECKING:
    DeclareRequest: type[Declare]
else:

    def __getattr__(name: str) -> object:
        """`DeclareRequest`, made on first use (see declare_request_model)."""
        if name == "DeclareRequest":
            return declare_request_model()
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class DeclareResponse(Wire):
    pipeline: str
    created: bool


class EmptyRequest(Wire):
    """The body of a POST that takes no parameters: `{}` or nothing. It is still sent as
    application/json, like every change, so a web page cannot send it cross-site."""


class DestroyRequest(Wire):
    purge: bool = False


class OkResponse(Wire):
    ok: Literal[True] = True


class PeekResponse(Wire):
    jobs: list[JobWire]


class FailedJobWire(Wire):
    job: JobWire
    error: str
    attempts: int
    failed_at: float

    @classmethod
    def from_failed(cls, failed: FailedJob) -> FailedJobWire:
        return cls(
            job=JobWire.from_job(failed.job),
            error=failed.error,
            attempts=failed.attempts,
            failed_at=failed.failed_at,
        )


class FailedResponse(Wire):
    failed: list[FailedJobWire]


class IdsRequest(Wire):
    ids: list[str] | None = None


class CountResponse(Wire):
    count: int


class WorkerWire(Wire):
    pid: int
    state: str
    executions: int
    rss_bytes: int
    created: float


class PoolsResponse(Wire):
    pools: list[str] = Field(description="The worker pools this server runs (smtp, jobs)")


class WorkersResponse(Wire):
    pool: str
    workers: list[WorkerWire]


class WorkerResponse(Wire):
    pool: str
    worker: WorkerWire


class ConnectionWire(Wire):
    uuid: str
    remote_addr: str
    helo: str | None
    mail_from: str | None
    recipients: list[str]
    auth_user: str | None
    tls: bool
    messages: int


class ConnectionsResponse(Wire):
    connections: list[ConnectionWire]


class HealthResponse(Wire):
    status: Literal["ready", "not ready"]
    smtp: bool
    pipelines: dict[str, bool]


class MessageSummaryWire(Wire):
    """One line of the inbox list (and the data of a `message` event)."""

    model_config = ConfigDict(extra="forbid", defer_build=True, serialize_by_alias=True)

    id: str
    received_at: str = Field(description="UTC, milliseconds and Z, as in the event")
    from_: str = Field(alias="from")
    to: str
    subject: str
    size: int = Field(description="Bytes of the raw message")
    attachments: int = Field(description="How many attachments it has")
    read: bool
    snippet: str


class MessagesResponse(Wire):
    total: int = Field(description="Messages the query selects, on every page")
    messages: list[MessageSummaryWire]


DEFAULT_WAIT_TIMEOUT = 30.0
"""Seconds `GET /messages/wait` waits when the caller does not say."""
MAX_WAIT_TIMEOUT = 300.0
"""The longest wait one request may ask for: an HTTP request held longer meets proxies' and
clients' own timeouts; a caller that needs more asks again with the same `since`."""
WAIT_REPLY_GRACE = 5.0
"""Seconds a caller of `GET /messages/wait` allows beyond its `timeout` for the answer: the
last look and the `seen` list are read after the wait ends, then the answer travels back."""
MAX_OPEN_WAITS = 1000
"""Waits one server holds at once; beyond, 429: each holds a task and a query per store."""
WAIT_SEEN_LIMIT = 100
"""At most this many messages in a timed-out wait's `seen` (the oldest): enough to tell a
test why nothing matched; `GET /messages?since=` has them all."""


class WaitResponse(Wire):
    """`GET /messages/wait`: the first match, or none and what did arrive meanwhile."""

    message: MessageSummaryWire | None = Field(
        description="The oldest message received since `since` that `q` selects"
    )
    timed_out: bool
    seen: list[MessageSummaryWire] | None = Field(
        default=None,
        description=f"Only on a timeout: the messages received since `since`, oldest first,"
        f" at most {WAIT_SEEN_LIMIT}",
    )


class FaultAdded(Wire):
    id: str


class FaultWire(FaultRule):
    """One rule as `GET /faults` lists it: its id and how many matches it has left."""

    id: str
    remaining: int | None = Field(description="Matches left; null for a rule without `times`")


class FaultsResponse(Wire):
    faults: list[FaultWire]


class ErrorResponse(Wire):
    error: str
    type: str
    position: int | None = Field(
        default=None, description="For an invalid search query: the 0-based offset at fault"
    )
