"""`mailrunner messages …`: the inbox of a running server, from a terminal or a script.

Each command is one route of the API (api/routes.py), like the `jobs` commands: a table or
`key: value` lines for people, the server's JSON with --json. A QUERY is the search language
of the web UI's search box (`from:alice has:attachment invoice`).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from mailrunner.api import routes
from mailrunner.api.schemas import MAX_LIST_LIMIT
from mailrunner.cli.common import api_options, call_api, server_options, show

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
