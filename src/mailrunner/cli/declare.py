"""`jobs declare`, in a module of its own: its --driver choices are the drivers the
configuration models name, and the other `jobs` commands never load those models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from mailrunner.api import routes
from mailrunner.api.client import declare_request
from mailrunner.cli.common import api_options, fail
from mailrunner.cli.remote import parse_pairs, print_answer
from mailrunner.config import DRIVER_NAMES
from mailrunner.errors import MailrunnerError


@click.command()
@click.argument("name")
@click.option("--driver", required=True, type=click.Choice(DRIVER_NAMES))
@click.option("--config", "driver_config", multiple=True, help="Driver setting key=value.")
@click.option("--priority", type=int, help="Lower is served first.")
@click.option("--prefetch", type=int, help="Jobs leased at once when consumed.")
@click.option("--retries", type=int, help="Executions before a job is failed.")
@click.option("--visibility-timeout", help="A lease's length, like 30s or 5m.")
@click.option("--consume", is_flag=True, help="Run its jobs on this server's jobs pool.")
@api_options
def declare(name: str, driver: str, driver_config: Sequence[str], **options: Any) -> None:
    """Declare a pipeline at run time (not kept across restarts). A setting left out takes
    the server's default (see `jobs.pipelines` in the README)."""
    given = {
        key: value
        for key in ("priority", "prefetch", "retries", "visibility_timeout")
        if (value := options.pop(key)) is not None
    }
    settings = {"driver": driver, "config": parse_pairs(driver_config, "--config"), **given}
    try:
        body = declare_request(name, settings, options.pop("consume"))
    except MailrunnerError as error:
        fail(str(error))
    print_answer(options, routes.DECLARE, body)
