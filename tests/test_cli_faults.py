"""`mailrunner faults …` against a running server: add each kind of rule, list as a table or
the server's JSON, remove, clear; a bad rule is a usage error before anything is sent."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from support.processes import run_cli
from support.server import RunningServer


@pytest.fixture
def faults_server(start_server: Callable[..., RunningServer]) -> RunningServer:
    return start_server(record=False, smtp={"faults_api": True})


def faults(server: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("faults", *args, "--server", server.api_url)


def ok(server: RunningServer, *args: str) -> str:
    result = faults(server, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def server_rules(server: RunningServer) -> list[dict[str, Any]]:
    answer = json.loads(ok(server, "list", "--json"))
    rules: list[dict[str, Any]] = answer["faults"]
    return rules


def test_add_makes_each_kind_of_rule(faults_server: RunningServer) -> None:
    bounce = json.loads(
        ok(
            faults_server,
            *("add", "--stage", "rcpt", "--match", "bounce@*"),
            *("--reply", "550 5.1.1 No such user", "--times", "2", "--json"),
        )
    )
    dropped = ok(faults_server, "add", "--stage", "data", "--disconnect", "--forever")
    ok(faults_server, "add", "--stage", "helo", "--delay", "2s")

    rules = server_rules(faults_server)
    assert rules[0]["id"] == bounce["id"]
    assert f"id: {rules[1]['id']}" in dropped
    shapes = [
        (rule["stage"], rule["match"], rule["action"], rule["reply"], rule["delay"], rule["times"])
        for rule in rules
    ]
    assert shapes == [
        (
            "rcpt",
            "bounce@*",
            "reply",
            {"code": 550, "enhanced": "5.1.1", "text": "No such user"},
            None,
            2,
        ),
        ("data", "*", "disconnect", None, None, None),
        ("helo", "*", "delay", None, 2.0, 1),
    ]


def test_list_shows_a_table_of_the_rules(faults_server: RunningServer) -> None:
    ok(faults_server, "add", "--stage", "rcpt", "--reply", "451 4.7.1 Try later", "--forever")

    table = ok(faults_server, "list")

    assert "451 4.7.1 Try later" in table
    assert "∞" in table, "a rule without times lasts until removed"
    assert "remaining" in table


def test_remove_one_rule_then_clear_the_rest(faults_server: RunningServer) -> None:
    for stage in ("connect", "mail", "rcpt"):
        ok(faults_server, "add", "--stage", stage, "--disconnect")
    first, *rest = (rule["id"] for rule in server_rules(faults_server))

    assert json.loads(ok(faults_server, "remove", first, "--json")) == {"ok": True}
    assert [rule["id"] for rule in server_rules(faults_server)] == rest
    gone = faults(faults_server, "remove", first)
    assert gone.returncode == 1
    assert f"no fault rule {first!r}" in gone.stderr
    assert "count: 2" in ok(faults_server, "clear")
    assert server_rules(faults_server) == []


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--stage", "rcpt", "--reply", "250 2.0.0 Fine"), "--reply"),
        (("--stage", "rcpt", "--reply", "550 4.1.1 Wrong class"), "--reply"),
        (("--stage", "rcpt", "--delay", "6m"), "--delay"),
        (("--stage", "rcpt", "--disconnect", "--times", "0"), "--times"),
        (("--stage", "quit", "--disconnect"), "--stage"),
        (("--stage", "rcpt"), "--reply, --disconnect and --delay"),
        (("--stage", "rcpt", "--disconnect", "--reply", "550 No"), "exactly one"),
        (("--stage", "rcpt", "--disconnect", "--times", "2", "--forever"), "--forever"),
    ],
)
def test_a_bad_rule_is_a_usage_error_and_adds_nothing(
    faults_server: RunningServer, args: tuple[str, ...], named: str
) -> None:
    result = faults(faults_server, "add", *args)

    assert result.returncode == 2, result.stderr
    assert named in result.stderr
    assert server_rules(faults_server) == []


def test_a_server_without_the_faults_api_exits_1(
    start_server: Callable[..., RunningServer],
) -> None:
    result = faults(start_server(record=False), "list")

    assert result.returncode == 1
    assert "smtp.faults_api" in result.stderr
