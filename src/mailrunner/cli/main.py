"""The `mailrunner` command line: serve, check a configuration, and the groups that talk to a
running server (jobs, workers, connections, messages, faults) or send a test email, and hash
a password for the AUTH credentials file.

A command's module is imported only when that command runs: the server's modules (aiosmtpd,
the broker clients), the API client (aiohttp) and pydantic take longer to import than most
commands take to run, and `mailrunner --version` needs none of them.
"""

from __future__ import annotations

import click

from mailrunner import __version__
from mailrunner.cli.lazy import LazyGroup

_COMMANDS = {
    "serve": "mailrunner.cli.server:serve",
    "config": "mailrunner.cli.server:config_group",
    "jobs": "mailrunner.cli.remote:jobs",
    "workers": "mailrunner.cli.remote:workers",
    "connections": "mailrunner.cli.remote:connections",
    "messages": "mailrunner.cli.messages:messages",
    "faults": "mailrunner.cli.faults:faults",
    "send": "mailrunner.cli.send:send",
    "auth": "mailrunner.cli.auth:auth",
}
"""Command name -> `module:attribute` of its click command."""


@click.group(cls=LazyGroup, lazy=_COMMANDS)
@click.version_option(__version__, prog_name="mailrunner")
def main() -> None:
    """mailrunner: an SMTP application server that turns every email into an event."""
