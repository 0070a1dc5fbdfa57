"""`mailrunner faults …`: the fault rules of a running server (smtp.faults_api), so a test
script or a person at a terminal can make it refuse, drop or slow down mail on purpose.

Each command is one route of the API (api/routes.py), like the `messages` commands. `add`
checks the rule with the model the server uses before sending it: a typo in --reply is a
usage error (exit 2) naming the option, not a round trip.
"""

from __future__ import annotations

from typing import Any, get_args

import click
from pydantic import ValidationError

from mailrunner.api import routes
from mailrunner.cli.common import api_options, call_api, show
from mailrunner.faults import FaultReply, FaultRule, FaultStage

LIST_COLUMNS = ("id", "stage", "match", "action", "reply", "delay", "times", "remaining")
UNLIMITED = "∞"
"""How the table shows a rule's `times` / `remaining` of null (until removed)."""


@click.group()
def faults() -> None:
    """Fault rules: make the server answer what a test tells it to (smtp.faults_api)."""


@faults.command()
@click.option("--stage", type=click.Choice(get_args(FaultStage)), required=True)
@click.option(
    "--match",
    default="*",
    show_default=True,
    help="Glob on the client IP (connect), HELO name (helo), address (mail, rcpt), or any"
    " recipient (data).",
)
@click.option("--reply", help="Answer this, e.g. '550 5.1.1 No such user' (4xx/5xx).")
@click.option("--disconnect", is_flag=True, help="Drop the connection instead of answering.")
@click.option("--delay", help="Wait this long (e.g. 2s, at most 300 s), then go on normally.")
@click.option("--times", type=int, default=None, help="Matches it acts on  [default: 1]")
@click.option("--forever", is_flag=True, help="Act until removed (times: null).")
@api_options
def add(
    *,
    stage: str,
    match: str,
    reply: str | None,
    disconnect: bool,
    delay: str | None,
    times: int | None,
    forever: bool,
    **options: Any,
) -> None:
    """Add a rule after the others; prints its id. One of --reply, --disconnect, --delay."""
    actions = {"reply": reply is not None, "disconnect": disconnect, "delay": delay is not None}
    chosen = [action for action, given in actions.items() if given]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --reply, --disconnect and --delay")
    if forever and times is not None:
        raise click.UsageError("--times and --forever exclude each other")
    fields: dict[str, Any] = {
        "stage": stage,
        "match": match,
        "action": chosen[0],
        "reply": reply,
        "delay": delay,
    }
    if forever or times is not None:
        fields["times"] = times
    rule = _rule(fields)
    show(call_api(options, routes.ADD_FAULT, rule), options["as_json"])


def _rule(fields: dict[str, Any]) -> FaultRule:
    """The rule the options describe, or a usage error naming the option at fault."""
    try:
        return FaultRule.model_validate(fields)
    except ValidationError as error:
        problem = error.errors()[0]
        field = str(problem["loc"][0]) if problem["loc"] else ""
        message = problem["msg"].removeprefix("Value error, ")
        raise click.BadParameter(message, param_hint=f"--{field}" if field else None) from None


@faults.command(name="list")
@api_options
def list_faults(**options: Any) -> None:
    """The rules in force, in the order they act, with the matches each has left."""
    data = call_api(options, routes.LIST_FAULTS)
    if not options["as_json"]:  # a table reads the reply as a line and a bound as "unlimited"
        data = {"faults": [_row(fault) for fault in data["faults"]]}
    show(data, options["as_json"], LIST_COLUMNS, "faults")


def _row(fault: dict[str, Any]) -> dict[str, Any]:
    reply = fault["reply"]
    return {
        **fault,
        "reply": FaultReply.model_validate(reply).line if reply is not None else None,
        "times": UNLIMITED if fault["times"] is None else fault["times"],
        "remaining": UNLIMITED if fault["remaining"] is None else fault["remaining"],
    }


@faults.command()
@click.argument("fault_id", metavar="ID")
@api_options
def remove(fault_id: str, **options: Any) -> None:
    """Remove one rule."""
    show(call_api(options, routes.DELETE_FAULT, params={"id": fault_id}), options["as_json"])


@faults.command()
@api_options
def clear(**options: Any) -> None:
    """Remove every rule; prints how many there were."""
    show(call_api(options, routes.CLEAR_FAULTS), options["as_json"])
