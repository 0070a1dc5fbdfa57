"""What every command shares: configuration discovery, the server's address, exit codes,
and output as tables for people or JSON for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from mailrunner.api.client import fetch_once
from mailrunner.errors import ApiUnavailable, ConfigError, MailrunnerError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from mailrunner.api.routes import Route
    from mailrunner.config import Config

EXIT_ERROR = 1
"""The server answered with an error, or the configuration is invalid."""
EXIT_USAGE = 2
"""A usage error, or the server cannot be reached."""

API_TIMEOUT = 30.0
"""Seconds a command waits for the server's answer."""
RPC_ENV = "MAILRUNNER_RPC"
TOKEN_ENV = "MAILRUNNER_TOKEN"
F = TypeVar("F", bound=Callable[..., Any])


def _config_path_option(long_flag: str, help_text: str) -> Callable[[F], F]:
    return click.option(
        "-c",
        long_flag,
        "config_path",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help=help_text,
    )


config_option = _config_path_option(
    "--config",
    "YAML file; else $MAILRUNNER_CONFIG, else ./mailrunner.yaml, else the embedded default.",
)
config_file_option = _config_path_option(
    "--config-file",
    "Find the server from rpc.listen of this file (default ./mailrunner.yaml).",
)
"""`jobs declare` takes the driver's `--config key=value`, so API commands spell it this way."""


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    click.echo(f"mailrunner: {message}", err=True)
    sys.exit(code)


def load_or_exit(config_path: Path | None) -> tuple[Config, str]:
    # here, not at the top: a command given --server reads no file and needs no YAML parser
    from mailrunner import config  # noqa: PLC0415

    try:
        return config.load(config_path)
    except ConfigError as error:
        fail(str(error))


def api_options(command: F) -> F:
    """--server, --token, -c and --json for every command that talks to a running server."""
    command = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(
        command
    )
    return server_options(command)


def server_options(command: F) -> F:
    """--server, --token and -c: where the server is and how to call it."""
    command = click.option(
        "--token", envvar=TOKEN_ENV, default=None, help=f"Bearer token (or ${TOKEN_ENV})."
    )(command)
    command = click.option(
        "--server",
        envvar=RPC_ENV,
        default=None,
        help=f"API URL (or ${RPC_ENV}); else rpc.listen of the configuration.",
    )(command)
    return config_file_option(command)


def server_url(server: str | None, config_path: Path | None) -> str:
    """--server, else $MAILRUNNER_RPC, else rpc.listen of the config file."""
    if server:
        return server if "://" in server else f"http://{server}"
    loaded, _ = load_or_exit(config_path)
    return f"http://{loaded.rpc.listen}"


def call_api(
    options: Mapping[str, Any],
    route: Route[Any],
    body: BaseModel | None = None,
    *,
    params: Mapping[str, str] | None = None,
    query: Mapping[str, int | str] | None = None,
    timeout: float = API_TIMEOUT,
) -> Any:
    """The answer to one call of `route` on the server of `options` (--server, --token, -c),
    as the JSON it sent (the bytes of a binary answer, the text of a text one); unreachable
    exits 2, an error answer exits 1. Blocking, without an event loop: the command waits for
    this one answer anyway, and asyncio would cost it more start-up than the call takes.
    `timeout` bounds the wait for the answer (a long-poll's must outlast the poll)."""
    url = server_url(options["server"], options["config_path"])
    try:
        return fetch_once(
            url, options["token"], route, body, params=params, query=query, timeout=timeout
        )
    except ApiUnavailable as error:
        fail(f"{error} (is the server running? see --server, ${RPC_ENV})", EXIT_USAGE)
    except MailrunnerError as error:
        fail(str(error))


def show(
    data: Any, as_json: bool, columns: Sequence[str] | None = None, rows_key: str = ""
) -> None:
    """JSON as the API sent it, or a table of `rows_key` with `columns`, or key: value lines."""
    if as_json:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    # rich only where people read the output: `jobs list` and --json start without it
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    console = Console() if sys.stdout.isatty() else Console(width=200)
    rows = data.get(rows_key) if rows_key and isinstance(data, dict) else None
    if rows is not None and columns:
        table = Table(*columns)
        for row in rows:
            table.add_row(*(_cell(row.get(column)) for column in columns))
        console.print(table)
        return
    if isinstance(data, dict):
        for key, value in data.items():
            console.print(f"[bold]{key}[/bold]: {_cell(value)}")
        return
    console.print(_cell(data))


def _cell(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else str(value)
