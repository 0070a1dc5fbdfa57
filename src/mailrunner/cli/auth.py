"""`mailrunner auth hash`: a line for `smtp.auth.credentials_file`, so no password is
stored in the clear and none appears in a shell's history or `ps`."""

from __future__ import annotations

import getpass
import sys

import click

from mailrunner.cli.common import EXIT_USAGE, fail
from mailrunner.smtp.credentials import (
    DEFAULT_COST,
    MAX_COST,
    MAX_PASSWORD_BYTES,
    MIN_COST,
    hash_line,
)


@click.group()
def auth() -> None:
    """SMTP AUTH credentials (smtp.auth.mode: verify)."""


@auth.command(name="hash")
@click.argument("username", required=False)
@click.option(
    "--cost",
    type=click.IntRange(MIN_COST, MAX_COST),
    default=DEFAULT_COST,
    show_default=True,
    help="bcrypt's work factor: each step doubles the time a check takes.",
)
def hash_command(username: str | None, cost: int) -> None:
    """Read a password from stdin (asked twice, unechoed, on a terminal) and print its bcrypt
    hash, as `USERNAME:hash` when USERNAME is given: a line of the credentials file."""
    password = _password()
    if not password:
        fail("the password is empty", EXIT_USAGE)
    if len(password) > MAX_PASSWORD_BYTES:
        fail(
            f"the password is {len(password)} bytes; bcrypt reads at most "
            f"{MAX_PASSWORD_BYTES} and would ignore the rest",
            EXIT_USAGE,
        )
    try:
        click.echo(hash_line(username, password, cost))
    except ValueError as error:
        fail(str(error), EXIT_USAGE)


def _password() -> bytes:
    """One line of stdin (its line ending removed), or asked for twice on a terminal."""
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            fail("the passwords differ", EXIT_USAGE)
        return first.encode()
    line = sys.stdin.buffer.readline(MAX_PASSWORD_BYTES * 4 + 2)
    return line.removesuffix(b"\n").removesuffix(b"\r")
