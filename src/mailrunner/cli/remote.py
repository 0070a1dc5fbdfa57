"""Commands that talk to a running server through its management API:
`jobs …`, `workers …` and `connections …`."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from mailrunner.api.client import ApiClient, pipeline_path
from mailrunner.api.schemas import MAX_LIST_LIMIT
from mailrunner.cli.common import api_options, call_api, show
from mailrunner.config import DRIVER_NAMES
from mailrunner.jobs.model import MAX_DELAY
from mailrunner.worker import EMAIL_JOB, Email, EventError

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
    "messages",
)


def _pairs(values: Sequence[str], what: str) -> dict[str, str]:
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


def _run(options: dict[str, Any], method: str, path: str, body: Any = None) -> Any:
    async def work(client: ApiClient) -> Any:
        return await client.call(method, path, body)

    return call_api(options["server"], options["token"], options["config_path"], work)


@click.group()
def jobs() -> None:
    """Pipelines and their jobs on a running server."""


@jobs.command(name="list")
@api_options
def list_pipelines(**options: Any) -> None:
    """List pipelines."""
    data = _run(options, "GET", "/jobs/pipelines")
    if options["as_json"]:
        show(data, True)
    else:
        for name in data["pipelines"]:
            click.echo(name)


@jobs.command()
@click.argument("pipeline")
@api_options
def stat(pipeline: str, **options: Any) -> None:
    """Counts and settings of a pipeline."""
    show(_run(options, "GET", f"{pipeline_path(pipeline)}/stat"), options["as_json"])


@jobs.command()
@click.argument("pipeline")
@api_options
def pause(pipeline: str, **options: Any) -> None:
    """Stop consuming a pipeline; pushes are still stored."""
    show(_run(options, "POST", f"{pipeline_path(pipeline)}/pause"), options["as_json"])


@jobs.command()
@click.argument("pipeline")
@api_options
def resume(pipeline: str, **options: Any) -> None:
    """Consume a paused pipeline again."""
    show(_run(options, "POST", f"{pipeline_path(pipeline)}/resume"), options["as_json"])


@jobs.command()
@click.argument("name")
@click.option("--driver", required=True, type=click.Choice(DRIVER_NAMES))
@click.option("--config", "driver_config", multiple=True, help="Driver setting key=value.")
@click.option("--priority", type=int, default=10, show_default=True)
@click.option("--prefetch", type=int, default=10, show_default=True)
@click.option("--retries", type=int, default=5, show_default=True)
@click.option("--visibility-timeout", default="5m", show_default=True)
@click.option("--consume", is_flag=True, help="Run its jobs on this server's jobs pool.")
@api_options
def declare(name: str, driver: str, driver_config: Sequence[str], **options: Any) -> None:
    """Declare a pipeline at run time (not kept across restarts)."""
    body = {
        "name": name,
        "driver": driver,
        "config": _pairs(driver_config, "--config"),
        "priority": options.pop("priority"),
        "prefetch": options.pop("prefetch"),
        "retries": options.pop("retries"),
        "visibility_timeout": options.pop("visibility_timeout"),
        "consume": options.pop("consume"),
    }
    show(_run(options, "POST", "/jobs/pipelines", body), options["as_json"])


@jobs.command()
@click.argument("pipeline")
@click.option("--purge", is_flag=True, help="Delete its stored jobs too.")
@api_options
def destroy(pipeline: str, purge: bool, **options: Any) -> None:
    """Detach a pipeline; its jobs stay stored unless --purge."""
    show(
        _run(options, "POST", f"{pipeline_path(pipeline)}/destroy", {"purge": purge}),
        options["as_json"],
    )


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
    for key, value in _pairs(options.pop("header"), "--header").items():
        headers.setdefault(key, []).append(value)
    job: dict[str, Any] = {
        "id": options.pop("job_id") or str(uuid.uuid4()),
        "job": options.pop("job_name"),
        "headers": headers,
        "options": {
            "pipeline": pipeline,
            "priority": options.pop("priority"),
            "delay": options.pop("delay"),
            "auto_ack": options.pop("auto_ack"),
        },
    }
    if payload_file is not None:
        job["payload_base64"] = base64.b64encode(payload_file.read_bytes()).decode()
    else:
        job["payload"] = payload
    show(_run(options, "POST", "/jobs/push", {"job": job}), options["as_json"])


@jobs.command()
@click.argument("pipeline")
@click.option("--limit", type=click.IntRange(1, MAX_LIST_LIMIT), default=10, show_default=True)
@api_options
def peek(pipeline: str, limit: int, **options: Any) -> None:
    """Show stored jobs in the order they will be served, without taking them."""
    data = _run(options, "GET", f"{pipeline_path(pipeline)}/peek?limit={limit}")
    if options["as_json"]:
        show(data, True)
        return
    rows = [{"id": j["id"], "job": j["job"], "summary": job_summary(j)} for j in data["jobs"]]
    show({"jobs": rows}, False, PEEK_COLUMNS, "jobs")


@jobs.group()
def failed() -> None:
    """The failed list of a pipeline."""


@failed.command(name="list")
@click.argument("pipeline")
@click.option("--limit", type=click.IntRange(1, MAX_LIST_LIMIT), default=100, show_default=True)
@api_options
def list_failed(pipeline: str, limit: int, **options: Any) -> None:
    """Jobs that used up their attempts or were nacked without requeue."""
    data = _run(options, "GET", f"{pipeline_path(pipeline)}/failed?limit={limit}")
    if options["as_json"]:
        show(data, True)
        return
    rows = [{"id": f["job"]["id"], "job": f["job"]["job"], **f} for f in data["failed"]]
    show({"failed": rows}, False, ("id", "job", "attempts", "error"), "failed")


@failed.command()
@click.argument("pipeline")
@click.option("--id", "ids", multiple=True, help="Only these jobs (repeatable); default all.")
@api_options
def retry(pipeline: str, ids: Sequence[str], **options: Any) -> None:
    """Push failed jobs back with their attempts reset."""
    body = {"ids": list(ids) or None}
    show(_run(options, "POST", f"{pipeline_path(pipeline)}/failed/retry", body), options["as_json"])


@failed.command()
@click.argument("pipeline")
@click.option("--id", "ids", multiple=True, help="Only these jobs (repeatable); default all.")
@api_options
def purge(pipeline: str, ids: Sequence[str], **options: Any) -> None:
    """Delete failed jobs."""
    body = {"ids": list(ids) or None}
    show(_run(options, "POST", f"{pipeline_path(pipeline)}/failed/purge", body), options["as_json"])


pool_option = click.option(
    "--pool", type=click.Choice(["smtp", "jobs"]), default="jobs", show_default=True
)


@click.group()
def workers() -> None:
    """Worker processes of a running server."""


@workers.command(name="list")
@pool_option
@api_options
def list_workers(pool: str, **options: Any) -> None:
    """List a pool's workers."""
    show(_run(options, "GET", f"/workers/{pool}"), options["as_json"], WORKER_COLUMNS, "workers")


@workers.command()
@pool_option
@api_options
def add(pool: str, **options: Any) -> None:
    """Start one more worker."""
    show(_run(options, "POST", f"/workers/{pool}/add"), options["as_json"])


@workers.command()
@pool_option
@api_options
def remove(pool: str, **options: Any) -> None:
    """Stop one idle worker."""
    show(_run(options, "POST", f"/workers/{pool}/remove"), options["as_json"])


@workers.command()
@pool_option
@api_options
def reset(pool: str, **options: Any) -> None:
    """Replace every worker (busy ones once they finish)."""
    show(_run(options, "POST", f"/workers/{pool}/reset"), options["as_json"])


@click.group()
def connections() -> None:
    """SMTP connections of a running server."""


@connections.command(name="list")
@api_options
def list_connections(**options: Any) -> None:
    """Open SMTP connections."""
    data = _run(options, "GET", "/connections")
    show(data, options["as_json"], CONNECTION_COLUMNS, "connections")


@connections.command()
@click.argument("connection_id", metavar="UUID")
@api_options
def close(connection_id: str, **options: Any) -> None:
    """Close a connection (421), after its current command if it is in one."""
    show(_run(options, "POST", f"/connections/{connection_id}/close"), options["as_json"])
