"""The `mailrunner` command line: serve, check a configuration, and the groups that talk to a
running server (jobs, workers, connections) or send a test email."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click
import yaml

from mailrunner import __version__, config, logs
from mailrunner.app import App
from mailrunner.cli.common import config_option, fail, load_or_exit
from mailrunner.cli.remote import connections, jobs, workers
from mailrunner.cli.send import send
from mailrunner.errors import ConfigError, MailrunnerError
from mailrunner.smtp.server import tls_context


@click.group()
@click.version_option(__version__, prog_name="mailrunner")
def main() -> None:
    """mailrunner: an SMTP application server that turns every email into an event."""


@main.command()
@config_option
@click.option(
    "--pidfile", type=click.Path(path_type=Path, dir_okay=False), help="Write the server pid here."
)
def serve(config_path: Path | None, pidfile: Path | None) -> None:
    """Run the SMTP server until SIGINT or SIGTERM."""
    loaded, source = load_or_exit(config_path)
    logs.configure(loaded.logs)
    try:
        app = App(loaded, source)
        asyncio.run(app.serve_until_signalled(pidfile))
    except (OSError, MailrunnerError) as error:
        fail(f"cannot start: {error}")


@main.group(name="config")
def config_group() -> None:
    """Inspect configuration."""


@config_group.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of YAML.")
def check(config_path: Path | None, as_json: bool) -> None:
    """Validate the configuration and print it in effect, secrets masked (exit 1 if invalid)."""
    loaded, source = load_or_exit(config_path)
    try:
        tls_context(loaded.smtp.tls)
    except ConfigError as error:
        fail(f"{error} (in {source})")
    effective = config.masked_dump(loaded)
    if as_json:
        click.echo(json.dumps({"source": source, "config": effective}, indent=2))
        return
    click.echo(f"# configuration from {source}: valid")
    click.echo(yaml.safe_dump(effective, sort_keys=False, allow_unicode=True), nl=False)


main.add_command(jobs)
main.add_command(workers)
main.add_command(connections)
main.add_command(send)
