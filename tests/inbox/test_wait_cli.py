"""`mailrunner messages wait` against a running server, as a script runs it: the match's JSON
and exit 0, exit 3 with what did arrive on a timeout, 1 for a refused request, 2 for no
server."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

from inbox_api_support import InboxServer, plain

from mailrunner.inbox.sql import sql_time
from support.net import free_port
from support.processes import run_cli
from support.waiting import WAIT_SECONDS, wait_until


def test_a_wait_in_flight_prints_the_message_sent_meanwhile(inbox_server: InboxServer) -> None:
    command = ["messages", "wait", "subject:confirm", "--timeout", "1m"]
    process = subprocess.Popen(
        [sys.executable, "-m", "mailrunner", *command, "--server", inbox_server.api_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: inbox_server.waits() == 1, "the command's wait to be armed")
        inbox_server.send(plain("other"))
        sent = inbox_server.send(plain("please confirm"))
        out, err = process.communicate(timeout=WAIT_SECONDS)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0, err
    summary = json.loads(out)
    assert (summary["id"], summary["subject"]) == (sent, "please confirm")
    assert summary["from"] == "a@example.com"


def test_since_finds_a_message_already_there(inbox_server: InboxServer) -> None:
    started = sql_time(datetime.now(UTC))
    first = inbox_server.send(plain("code 1"))
    second = inbox_server.send(plain("code 2"))
    for since, expected in ((started, first), (first, second)):
        result = run_cli(
            "messages", "wait", "subject:code", "--since", since, "--timeout", "30s",
            "--server", inbox_server.api_url,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["id"] == expected


def test_a_timeout_exits_3_listing_what_arrived(inbox_server: InboxServer) -> None:
    started = sql_time(datetime.now(UTC))
    arrived = inbox_server.send(plain("newsletter"))
    result = run_cli(
        "messages", "wait", "subject:confirm", "--since", started, "--timeout", "0.5s",
        "--server", inbox_server.api_url,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert result.stdout == ""
    assert "no message matched 'subject:confirm' within 0.5s; 1 arrived since:" in result.stderr
    assert arrived in result.stderr
    assert "newsletter" in result.stderr


def test_a_refused_request_exits_1_and_no_server_exits_2(inbox_server: InboxServer) -> None:
    refused = run_cli(
        "messages", "wait", "--since", "last week", "--timeout", "1s",
        "--server", inbox_server.api_url,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "since must be an inbox message id or an ISO 8601 time" in refused.stderr
    too_long = run_cli("messages", "wait", "--timeout", "6m", "--server", inbox_server.api_url)
    assert too_long.returncode == 1
    assert "timeout must be seconds from 0 to 300, not '6m'" in too_long.stderr, "as typed"
    unreachable = run_cli(
        "messages", "wait", "--timeout", "1s", "--server", f"127.0.0.1:{free_port()}"
    )
    assert unreachable.returncode == 2
    assert "cannot reach" in unreachable.stderr
    bad_duration = run_cli("messages", "wait", "--timeout", "soon", "--server", "127.0.0.1:1")
    assert bad_duration.returncode == 2
    assert "--timeout" in bad_duration.stderr
