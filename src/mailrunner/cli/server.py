"""`mailrunner serve` and `mailrunner config check`: the commands that load the server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click
import yaml

from mailrunner import config, logs
from mailrunner.app import App
from mailrunner.cli.common import config_option, fail, load_or_exit
from mailrunner.errors import ConfigError, MailrunnerError
from mailrunner.loops import loop_factory
from mailrunner.smtp.credentials import read_at_start
from mailrunner.smtp.server import tls_context


@click.command()
@config_option
@click.option(
    "--pidfile", type=click.Path(path_type=Path, dir_okay=False), help="Write the server pid here."
)
def serve(config_path: Path | None, pidfile: Path | None) -> None:
    """Run the SMTP server until SIGINT or SIGTERM."""
    loaded, source = load_or_exit(config_path)
    logs.configure(loaded.logs)
    try:
        new_loop = loop_factory(loaded.server.loop)
        app = App(loaded, source)
        with asyncio.Runner(loop_factory=new_loop) as runner:
            runner.run(app.serve_until_signalled(pidfile))
    except (OSError, MailrunnerError) as error:
        fail(f"cannot start: {error}")


@click.group(name="config")
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
        if loaded.smtp.auth.credentials_file is not None:
            read_at_start(loaded.smtp.auth.credentials_file)
        loop_factory(loaded.server.loop)
    except ConfigError as error:
        fail(f"{error} (in {source})")
    effective = config.masked_dump(loaded)
    if as_json:
        click.echo(json.dumps({"source": source, "config": effective}, indent=2))
        return
    click.echo(f"# configuration from {source}: valid")
    click.echo(yaml.safe_dump(effective, sort_keys=False, allow_unicode=True), nl=False)
