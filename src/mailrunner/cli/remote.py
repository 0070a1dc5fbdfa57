"""Commands that talk to a running server through ApiClient: `jobs …`, `workers …` and
`connections …`. Each is one route of the API, and prints the server's answer: as JSON with
--json, else as a table or `key: value` lines.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import BaseModel

from mailrunner.api import routes
from mailrunner.api.routes import Route
from mailrunner.api.schemas import MAX_LIST_LIMIT, DestroyRequest, IdsRequest, JobWire, PushRequest
from mailrunner.cli.common import api_options, call_api, show
from mailrunner.cli.lazy import LazyGroup
from mailrunner.jobs.model import MAX_DELAY, Job, JobOptions

M = TypeVar("M", bound=BaseModel)
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]
PEEK_COLUMNS = ("id", "job", "summary")
SUMMARY_LIMIT = 120
WORKER_COLUMNS = ("pid", "state", "executions", "rss_bytes", "created")
CONNECTION_COLUMNS = (
    "uuid",
    "remote_addr",
    "helo",
    "mail_from",
    "recipients",
    "auth_user",
    "tls",
    "messages",
)


def parse_pairs(values: Sequence[str], what: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r}: expected key=value", param_hint=what)
        pairs[key] = item
    return pairs


def job_summary(job: Mapping[str, Any]) -> str:
    """One line per job for the peek table (the whole job is in --json): an email's envelope,
    subject and attachment count, else the start of the payload."""
    # the SDK reads events; only `jobs peek` needs it, so the other commands start without it
    from mailrunner.worker import EMAIL_JOB, Email, EventError  # noqa: PLC0415

    payload = job.get("payload")
    if not isinstance(payload, str):
        return "(binary payload)"
    if job.get("job") == EMAIL_JOB:
        try:
            email = Email.from_json(payload)
        except EventError:
            pass
        else:
            envelope = email.envelope
            parts = [
                f"{envelope.from_ or '<>'} → {', '.join(envelope.to)}",
                repr(email.message.subject),
            ]
            if email.attachments:
                parts.append(f"{len(email.attachments)} attachment(s)")
            return _one_line(" · ".join(parts))
    return _one_line(payload)


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= SUMMARY_LIMIT else flat[: SUMMARY_LIMIT - 1] + "…"


def print_answer(
    options: Mapping[str, Any],
    route: Route[M],
    body: BaseModel | None = None,
    **params: str,
) -> None:
    show(call_api(options, route, body, params=params), options["as_json"])


@click.group(cls=LazyGroup, lazy={"declare": "mailrunner.cli.declare:declare"})
def jobs() -> None:
    """Pipelines and their jobs on a running server."""


@jobs.command(name="list")
@api_options
def list_pipelines(**options: Any) -> None:
    """List pipelines."""
    data = call_api(options, routes.LIST_PIPELINES)
    if options["as_json"]:
        show(data, True)
    else:
        for name in data["pipelines"]:
            click.echo(name)


@jobs.command()
@click.argument("pipeline")
@click.option("--purge", is_flag=True, help="Delete its stored jobs too.")
@api_options
def destroy(pipeline: str, purge: bool, **options: Any) -> None:
    """Detach a pipeline; its jobs stay stored unless --purge."""
    print_answer(options, routes.DESTROY, DestroyRequest(purge=purge), name=pipeline)


@jobs.command()
@click.argument("pipeline")
@click.option("--payload", default="", help="Payload text.")
@click.option("--payload-file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--name", "job_name", default="cli.job", show_default=True, help="Job name.")
@click.option("--id", "job_id", default=None, help="Job id (default: a new UUID).")
@click.option("--header", multiple=True, help="Header key=value (repeatable).")
@click.option("--priority", type=int, default=0, help="0 = the pipeline's priority.")
@click.option(
    "--delay", type=click.FloatRange(0, MAX_DELAY), default=0.0, help="Seconds (30 days at most)."
)
@click.option("--auto-ack", is_flag=True)
@api_options
def push(pipeline: str, payload: str, payload_file: Path | None, **options: Any) -> None:
    """Push one job; returns once it is stored."""
    headers: dict[str, list[str]] = {}
    for key, value in parse_pairs(options.pop("header"), "--header").items():
        headers.setdefault(key, []).append(value)
    job = Job(
        id=options.pop("job_id") or str(uuid.uuid4()),
        name=options.pop("job_name"),
        payload=payload_file.read_bytes() if payload_file is not None else payload.encode(),
        options=JobOptions(
            pipeline, options.pop("priority"), options.pop("delay"), options.pop("auto_ack")
        ),
        headers=headers,
    )
    print_answer(options, routes.PUSH, PushRequest(job=JobWire.from_job(job)))


def _limit_option(default: int) -> Decorator:
    return click.option(
        "--limit", type=click.IntRange(1, MAX_LIST_LIMIT), default=default, show_default=True
    )


@dataclass(frozen=True)
class _JobsTable:
    """How a list of jobs shows as a table: the answer's list, the columns, and the row
    made of each entry."""

    key: str
    columns: tuple[str, ...]
    row: Callable[[dict[str, Any]], dict[str, Any]]


def _jobs_list_command(
    group: click.Group, name: str, route: Route[Any], summary: str, *, limit: int, table: _JobsTable
) -> None:
    """A command that lists a pipeline's jobs from `route`, at most `limit` by default: as
    the server sent them with --json, else as `table`."""

    @group.command(name=name, help=summary)
    @click.argument("name", metavar="PIPELINE")
    @_limit_option(limit)
    @api_options
    def command(name: str, limit: int, **options: Any) -> None:
        data = call_api(options, route, query={"limit": limit}, params={"name": name})
        if options["as_json"]:
            show(data, True)
            return
        rows = [table.row(entry) for entry in data[table.key]]
        show({table.key: rows}, False, table.columns, table.key)


@jobs.group()
def failed() -> None:
    """The failed list of a pipeline."""


_jobs_list_command(
    jobs,
    "peek",
    routes.PEEK,
    "Show stored jobs in the order they will be served, without taking them.",
    limit=10,
    table=_JobsTable(
        "jobs",
        PEEK_COLUMNS,
        lambda job: {"id": job["id"], "job": job["job"], "summary": job_summary(job)},
    ),
)
_jobs_list_command(
    failed,
    "list",
    routes.FAILED,
    "Jobs that used up their attempts or were nacked without requeue.",
    limit=100,
    table=_JobsTable(
        "failed",
        ("id", "job", "attempts", "error"),
        lambda entry: {"id": entry["job"]["id"], "job": entry["job"]["job"], **entry},
    ),
)


def _failed_ids_command(name: str, route: Route[Any], summary: str) -> None:
    """A command on some (`--id`) or all of a pipeline's failed jobs."""

    @failed.command(name=name, help=summary)
    @click.argument("name", metavar="PIPELINE")
    @click.option("--id", "ids", multiple=True, help="Only these jobs (repeatable); default all.")
    @api_options
    def command(name: str, ids: Sequence[str], **options: Any) -> None:
        print_answer(options, route, IdsRequest(ids=list(ids) or None), name=name)


_failed_ids_command(
    "retry", routes.RETRY_FAILED, "Push failed jobs back with their attempts reset."
)
_failed_ids_command("purge", routes.PURGE_FAILED, "Delete failed jobs.")


pool_option = click.option(
    "--pool", type=click.Choice(["smtp", "jobs"]), default="jobs", show_default=True
)


@click.group()
def workers() -> None:
    """Worker processes of a running server."""


@click.group()
def connections() -> None:
    """SMTP connections of a running server."""


def _route_command(
    group: click.Group,
    name: str,
    route: Route[Any],
    summary: str,
    parameter: Decorator | None = None,
    *,
    table: tuple[str, Sequence[str]] = ("", ()),
) -> None:
    """A command that calls `route` without a body and prints the answer, as a table of
    `table` (its key and columns) if given; `parameter` is the click argument or option
    named as the route's path parameter."""
    rows_key, columns = table

    @group.command(name=name, help=summary)
    @api_options
    def command(**options: Any) -> None:
        params = {key: options.pop(key) for key in route.parameters}
        data = call_api(options, route, params=params)
        show(data, options["as_json"], columns, rows_key)

    if parameter is not None:
        parameter(command)


pipeline_argument = click.argument("name", metavar="PIPELINE")
_ROUTE_COMMANDS: tuple[tuple[click.Group, str, Route[Any], str, Decorator], ...] = (
    (jobs, "stat", routes.STAT, "Counts and settings of a pipeline.", pipeline_argument),
    (
        jobs,
        "pause",
        routes.PAUSE,
        "Stop consuming a pipeline; pushes are still stored.",
        pipeline_argument,
    ),
    (jobs, "resume", routes.RESUME, "Consume a paused pipeline again.", pipeline_argument),
    (workers, "add", routes.ADD_WORKER, "Start one more worker.", pool_option),
    (workers, "remove", routes.REMOVE_WORKER, "Stop one idle worker.", pool_option),
    (
        workers,
        "reset",
        routes.RESET_WORKERS,
        "Replace every worker (busy ones once they finish).",
        pool_option,
    ),
    (
        connections,
        "close",
        routes.CLOSE_CONNECTION,
        "Close a connection (421), after its current command if it is in one.",
        click.argument("uuid", metavar="UUID"),
    ),
)
"""Commands that are one call without a body: (group, name, route, help, path parameter)."""
for _definition in _ROUTE_COMMANDS:
    _route_command(*_definition)
_route_command(
    workers,
    "list",
    routes.WORKERS,
    "List a pool's workers.",
    pool_option,
    table=("workers", WORKER_COLUMNS),
)
_route_command(
    connections,
    "list",
    routes.CONNECTIONS,
    "Open SMTP connections.",
    table=("connections", CONNECTION_COLUMNS),
)
