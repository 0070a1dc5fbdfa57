"""The `mailrunner` command line: serve, and check a configuration."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import click
import yaml

from mailrunner import __version__, config, logs
from mailrunner.app import App
from mailrunner.errors import ConfigError, MailrunnerError

EXIT_SERVER_ERROR = 1
EXIT_USAGE = 2

config_option = click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="YAML file; else $MAILRUNNER_CONFIG, else ./mailrunner.yaml, else the embedded default.",
)


def _load_or_exit(config_path: Path | None) -> tuple[config.Config, str]:
    try:
        return config.load(config_path)
    except ConfigError as error:
        click.echo(f"mailrunner: {error}", err=True)
        sys.exit(EXIT_SERVER_ERROR)


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
    loaded, source = _load_or_exit(config_path)
    logs.configure(loaded.logs)
    try:
        app = App(loaded, source)
        asyncio.run(app.serve_until_signalled(pidfile))
    except (OSError, MailrunnerError) as error:
        click.echo(f"mailrunner: cannot start: {error}", err=True)
        sys.exit(EXIT_SERVER_ERROR)


@main.group(name="config")
def config_group() -> None:
    """Inspect configuration."""


@config_group.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of YAML.")
def check(config_path: Path | None, as_json: bool) -> None:
    """Validate the configuration and print it in effect, secrets masked (exit 1 if invalid)."""
    loaded, source = _load_or_exit(config_path)
    effective = config.masked_dump(loaded)
    if as_json:
        click.echo(json.dumps({"source": source, "config": effective}, indent=2))
        return
    click.echo(f"# configuration from {source}: valid")
    click.echo(yaml.safe_dump(effective, sort_keys=False, allow_unicode=True), nl=False)
