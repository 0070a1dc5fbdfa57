"""`mailrunner messages …`: the inbox of a running server, from a terminal or a script.

Each command is one route of the API (api/routes.py), like the `jobs` commands: a table or
`key: value` lines for people, the server's JSON with --json. A QUERY is the search language
of the web UI's search box (`from:alice has:attachment invoice`). `wait` is for scripts and
tests: it prints the message's JSON, and its exit status tells a match (0) from a timeout (3).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from mailrunner.api import routes
from mailrunner.api.schemas import (
    DEFAULT_WAIT_TIMEOUT,
    MAX_LIST_LIMIT,
    WAIT_REPLY_GRACE,
    WAIT_SEEN_LIMIT,
)
from mailrunner.cli.common import (
    api_options,
    call_api,
    server_options,
    show,
)
from mailrunner.durations import parse_duration

EXIT_TIMED_OUT = 3
"""`messages wait`: no message matched within --timeout (the server answered; no error)."""
LIST_COLUMNS = ("id", "received_at", "from", "to", "subject", "size", "attachments", "read")
SHOWN_FIELDS = ("id", "received_at", "remote_addr", "read")
"""Fields of the event `show` prints as they are, before the message's own."""

message_id_argument = click.argument("message_id", metavar="ID")
query_argument = click.argument("query", required=False, default="")


@click.group()
def messages() -> None:
    """The inbox: every email the server accepted (inbox.enabled)."""


@messages.command(name="list")
@query_argument
@click.option("--limit", type=click.IntRange(1, MAX_LIST_LIMIT), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
@api_options
def list_messages(query: str, limit: int, offset: int, **options: Any) -> None:
    """List messages, newest first; those QUERY selects if given."""
    asked: dict[str, int | str] = {"limit": limit, "offset": offset}
    if query:
        asked["q"] = query
    data = call_api(options, routes.LIST_MESSAGES, query=asked)
    show(data, options["as_json"], LIST_COLUMNS, "messages")
    if not options["as_json"]:
        click.echo(f"{len(data['messages'])} of {data['total']} shown")


@messages.command(name="show")
@message_id_argument
@api_options
def show_message(message_id: str, **options: Any) -> None:
    """A message's envelope, headers, attachments and text (its whole event with --json)."""
    event = call_api(options, routes.GET_MESSAGE, params={"id": message_id})
    if options["as_json"]:
        show(event, True)
        return
    show(_overview(event), False)
    body = event["message"]["body"]
    if body:
        click.echo()
        click.echo(body)


def _overview(event: dict[str, Any]) -> dict[str, Any]:
    """What `show` prints as `key: value` lines, addresses as they are written in mail."""
    message, envelope = event["message"], event["envelope"]
    overview = {field: event[field] for field in SHOWN_FIELDS}
    overview |= {
        "envelope": f"{envelope['from'] or '<>'} → {', '.join(envelope['to'])}",
        "from": _addresses(message["from"]),
        "to": _addresses(message["to"]),
        "cc": _addresses(message["cc"]),
        "subject": message["subject"],
        "attachments": [
            f"{index}: {entry['filename'] or '(no name)'} ({entry['content_type']},"
            f" {entry['size']} bytes)"
            for index, entry in enumerate(event["attachments"])
        ],
    }
    return {key: value for key, value in overview.items() if value not in ("", [])}


def _addresses(addresses: list[dict[str, str]]) -> str:
    return ", ".join(
        f"{entry['name']} <{entry['email']}>" if entry["name"] else entry["email"]
        for entry in addresses
    )


@messages.command()
@message_id_argument
@server_options
def raw(message_id: str, **options: Any) -> None:
    """Write the exact bytes received to standard output (an .eml file)."""
    data: bytes = call_api(options, routes.RAW_MESSAGE, params={"id": message_id})
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


@messages.command()
@message_id_argument
@api_options
def delete(message_id: str, **options: Any) -> None:
    """Delete one message."""
    show(call_api(options, routes.DELETE_MESSAGE, params={"id": message_id}), options["as_json"])


@messages.command()
@query_argument
@api_options
def clear(query: str, **options: Any) -> None:
    """Delete every message, or those QUERY selects."""
    data = call_api(options, routes.CLEAR_MESSAGES, query={"q": query} if query else None)
    show(data, options["as_json"])


@messages.command()
@query_argument
@click.option(
    "--timeout",
    "wait_for",
    default=f"{DEFAULT_WAIT_TIMEOUT:g}s",
    show_default=True,
    help="How long to wait, like 10s or 2m (at most 5m).",
)
@click.option(
    "--since",
    metavar="ID|TIME",
    help="Only messages received after this message, or at or after this ISO 8601 time"
    " (UTC unless it has an offset); default: now.",
)
@server_options
def wait(query: str, wait_for: str, since: str | None, **options: Any) -> None:
    """Wait for the first message QUERY selects (any message without one) and print its
    summary as JSON. Exits 3 when none comes within --timeout, listing on standard error
    what did arrive."""
    try:
        seconds = parse_duration(wait_for)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--timeout") from None
    asked = {"timeout": wait_for}  # as typed: the server reads durations, and an error quotes it
    if query:
        asked["q"] = query
    if since:
        asked["since"] = since
    answer = call_api(
        options, routes.WAIT_MESSAGES, query=asked, timeout=seconds + WAIT_REPLY_GRACE
    )
    if answer["message"] is not None:
        show(answer["message"], True)
        return
    seen = answer.get("seen") or []
    more = f" (the first {WAIT_SEEN_LIMIT})" if len(seen) == WAIT_SEEN_LIMIT else ""
    click.echo(
        f"mailrunner: no message matched {query or 'anything'!r} within {wait_for};"
        f" {len(seen)} arrived since{more}{':' if seen else ''}",
        err=True,
    )
    for summary in seen:
        click.echo(
            f"  {summary['received_at']}  {summary['id']}  {summary['from']} → {summary['to']}"
            f"  {summary['subject']}",
            err=True,
        )
    sys.exit(EXIT_TIMED_OUT)
