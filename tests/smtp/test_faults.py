"""Fault rules as an SMTP client meets them, driven with smtplib and a raw client: each stage and
action, what a refusal leaves behind, rules' order, counts and removal, and that a rule acts
before the server's own checks."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from mailrunner.faults import FaultStage
from support.faults import (
    COMMAND_STAGES,
    DELAY,
    MESSAGE,
    REFUSAL,
    REFUSED,
    STAGES,
    add_fault,
    converse,
    delete_fault,
    fault_server,
    injected,
    raw_up_to,
    remaining,
    smtp_client,
)
from support.raw_smtp import raw_smtp
from support.sample_mail import WITH_ATTACHMENT
from support.server import RunningServer

Start = Callable[..., RunningServer]


@pytest.fixture
def server(start_server: Start) -> RunningServer:
    return fault_server(start_server)


def send(
    server: RunningServer, recipients: list[str] | None = None
) -> dict[str, tuple[int, bytes]]:
    """One message over a new connection; smtplib's refused recipients."""
    with smtp_client(server) as client:
        return client.sendmail("a@example.com", recipients or ["b@example.com"], MESSAGE)


@pytest.mark.parametrize("stage", COMMAND_STAGES)
def test_a_reply_rule_answers_its_command_and_the_session_goes_on(
    server: RunningServer, stage: FaultStage
) -> None:
    add_fault(server, stage=stage, reply=REFUSAL)
    with smtp_client(server) as client:
        assert converse(client, stage)[0] == REFUSED
        client.rset()
        assert converse(client, "data")[0][0] == 250, "the rule (times 1) acted twice"
    assert len(server.delivery.events) == 1, "the refused message was delivered"


def test_a_reply_rule_at_connect_is_the_greeting_then_the_connection_closes(
    server: RunningServer,
) -> None:
    add_fault(server, stage="connect", match="127.0.0.*", reply="554 5.7.1 No service here")
    with raw_smtp(server.port) as raw:
        assert raw.greeting == b"554 5.7.1 No service here\r\n"
        assert raw.closed()
        assert raw.buffer == b"", "the server said more after the refusing greeting"
    assert send(server) == {}


def test_a_connect_rule_matches_the_client_ip(server: RunningServer) -> None:
    fault_id = add_fault(server, stage="connect", match="10.*", reply=REFUSAL)
    assert send(server) == {}
    assert remaining(server) == {fault_id: 1}, "a rule for 10.* met 127.0.0.1"


@pytest.mark.parametrize("stage", COMMAND_STAGES)
def test_a_421_reply_closes_the_connection_after_it(
    server: RunningServer, stage: FaultStage
) -> None:
    add_fault(server, stage=stage, reply="421 4.7.0 Rate limited")
    with raw_smtp(server.port) as raw:
        assert raw_up_to(raw, stage) == b"421 4.7.0 Rate limited\r\n"
        assert raw.closed()
        assert raw.buffer == b"", "the server said more after its 421"
    assert server.delivery.events == []


@pytest.mark.parametrize("stage", STAGES)
def test_a_disconnect_rule_closes_the_connection_without_a_reply(
    server: RunningServer, stage: FaultStage
) -> None:
    add_fault(server, stage=stage, action="disconnect")
    with raw_smtp(server.port) as raw:
        if stage == "connect":
            assert raw.greeting == b"", "a disconnect at connect sent a greeting"
        else:
            assert raw.greeting.startswith(b"220 ")
            assert raw_up_to(raw, stage) == b"", f"a disconnect at {stage} sent a reply"
    assert send(server) == {}
    assert len(server.delivery.events) == 1, "the message cut off at its final dot was delivered"


@pytest.mark.parametrize("stage", COMMAND_STAGES)
def test_a_delay_rule_holds_the_reply_then_the_command_goes_on(
    server: RunningServer, stage: FaultStage
) -> None:
    add_fault(server, stage=stage, action="delay", delay=DELAY)
    with smtp_client(server) as client:
        reply, seconds = converse(client, stage)
        assert reply[0] == 250, reply
        assert seconds >= DELAY, f"the {stage} reply came after {seconds:.3f}s"
        if stage != "data":
            assert converse(client, "data")[0][0] == 250
    assert len(server.delivery.events) == 1


def test_a_delay_rule_at_connect_holds_the_greeting(server: RunningServer) -> None:
    add_fault(server, stage="connect", action="delay", delay=DELAY)
    started = time.monotonic()
    with smtp_client(server) as client:
        seconds = time.monotonic() - started
        assert converse(client, "data")[0][0] == 250
    assert seconds >= DELAY, f"the greeting came after {seconds:.3f}s"


@pytest.mark.parametrize("stage", ["connect", "rcpt"])
def test_the_read_timeout_does_not_fire_while_a_delay_holds_the_reply(
    start_server: Start, stage: FaultStage
) -> None:
    running = fault_server(start_server, read_timeout=0.5)
    add_fault(running, stage=stage, action="delay", delay=0.8)
    with smtp_client(running) as client:
        assert converse(client, "data")[0][0] == 250
    assert len(running.delivery.events) == 1


def test_a_delayed_command_meets_no_other_rule(server: RunningServer) -> None:
    add_fault(server, stage="rcpt", action="delay", delay=DELAY)
    add_fault(server, stage="rcpt", reply=REFUSAL)
    with smtp_client(server) as client:
        client.ehlo("client.example")
        client.mail("a@example.com")
        assert client.rcpt("b@example.com")[0] == 250, "the delayed RCPT met the next rule"
        assert client.rcpt("c@example.com") == REFUSED


def test_a_refused_rcpt_is_not_a_recipient(server: RunningServer) -> None:
    add_fault(server, stage="rcpt", match="bounce@*", reply="550 5.1.1 No such user")
    refused = send(server, ["bounce@example.com", "b@example.com"])
    assert refused == {"bounce@example.com": (550, b"5.1.1 No such user")}
    (event,) = server.delivery.events
    assert event["envelope"]["to"] == ["b@example.com"]


def test_a_refused_mail_leaves_no_sender(server: RunningServer) -> None:
    add_fault(server, stage="mail", reply=REFUSAL)
    with smtp_client(server) as client:
        client.ehlo("client.example")
        assert client.mail("a@example.com") == REFUSED
        assert client.rcpt("b@example.com")[0] == 503, "RCPT found a sender after a refused MAIL"
        assert client.mail("a@example.com")[0] == 250


def test_a_refused_data_delivers_nothing_and_ends_the_transaction(server: RunningServer) -> None:
    add_fault(server, stage="data", reply="451 4.3.0 Try again later")
    with smtp_client(server) as client:
        assert converse(client, "data")[0] == (451, b"4.3.0 Try again later")
        assert server.delivery.events == []
        assert client.mail("a@example.com")[0] == 250, "the refused transaction is still open"


def test_a_refused_data_leaves_no_attachment_files(start_server: Start, tmp_path: Path) -> None:
    attachments = tmp_path / "attachments"
    running = fault_server(
        start_server, attachment_storage={"mode": "tempfile", "temp_dir": str(attachments)}
    )
    with smtp_client(running) as client:
        client.sendmail("a@example.com", ["b@example.com"], WITH_ATTACHMENT)
    stored = set(attachments.iterdir())
    assert len(stored) == 1, "an accepted message should leave its attachment folder"
    add_fault(running, stage="data", reply=REFUSAL)
    with smtp_client(running) as client, pytest.raises(smtplib.SMTPDataError):
        client.sendmail("a@example.com", ["b@example.com"], WITH_ATTACHMENT)
    assert set(attachments.iterdir()) == stored, "the refused message left attachment files"


def test_the_first_rule_added_acts_first_and_uses_only_its_own_count(
    server: RunningServer,
) -> None:
    first = add_fault(server, stage="rcpt", reply="550 5.1.1 First rule")
    second = add_fault(server, stage="rcpt", reply="552 5.2.2 Second rule", times=2)
    with smtp_client(server) as client:
        client.ehlo("client.example")
        client.mail("a@example.com")
        assert client.rcpt("b@example.com") == (550, b"5.1.1 First rule")
        assert remaining(server) == {second: 2}, f"{first} used up, {second} untouched"
        assert client.rcpt("b@example.com") == (552, b"5.2.2 Second rule")


def test_a_rule_without_times_lasts_until_deleted(server: RunningServer) -> None:
    fault_id = add_fault(server, stage="rcpt", reply=REFUSAL, times=None)
    for _ in range(5):
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            send(server)
    assert remaining(server) == {fault_id: None}
    delete_fault(server, fault_id)
    assert send(server) == {}
    assert len(server.delivery.events) == 1


@pytest.mark.parametrize(
    ("stage", "match", "meets", "misses"),
    [
        (
            "helo",
            "*.bad.example",
            {"local_hostname": "Mx.BAD.Example"},
            {"local_hostname": "bad.example"},
        ),
        ("mail", "bounce@*", {"sender": "Bounce@Example.COM"}, {"sender": "nobounce@example.com"}),
        ("mail", "Bounce@*", {"sender": "bounce@example.com"}, {"sender": "nobounce@example.com"}),
        (
            "rcpt",
            "*@bounce.example",
            {"to": ["Ann@Bounce.Example"]},
            {"to": ["ann@bounce.example.org"]},
        ),
        (
            "data",
            "*@bounce.example",
            {"to": ["b@example.com", "X@BOUNCE.example"]},
            {"to": ["b@example.com"]},
        ),
    ],
)
def test_a_rule_matches_its_glob_on_the_lowercased_value(
    server: RunningServer,
    stage: FaultStage,
    match: str,
    meets: dict[str, Any],
    misses: dict[str, Any],
) -> None:
    add_fault(server, stage=stage, match=match, reply=REFUSAL, times=None)
    assert sendmail(server, **misses) is None, f"{match!r} met {misses}"
    assert sendmail(server, **meets) == 550, f"{match!r} missed {meets}"


def sendmail(
    server: RunningServer,
    local_hostname: str = "client.example",
    sender: str = "a@example.com",
    to: tuple[str, ...] = ("b@example.com",),
) -> int | None:
    """Send one message; the code of the reply that refused it (None: accepted)."""
    try:
        with smtplib.SMTP(server.host, server.port, local_hostname=local_hostname) as client:
            client.sendmail(sender, list(to), MESSAGE)
    except smtplib.SMTPRecipientsRefused as error:
        return max(code for code, _ in error.recipients.values())
    except smtplib.SMTPResponseException as error:
        return error.smtp_code
    return None


def test_configured_rules_act_from_start(start_server: Start) -> None:
    rule = {"stage": "rcpt", "match": "nobody@*", "reply": "550 5.1.1 No such user", "times": None}
    running = start_server(smtp={"faults": [rule]})
    assert send(running, ["nobody@example.com", "b@example.com"]) == {
        "nobody@example.com": (550, b"5.1.1 No such user")
    }
    (listed,) = remaining(running).values()
    assert listed is None


def test_each_acting_rule_counts_in_the_metric(server: RunningServer) -> None:
    add_fault(server, stage="connect", action="delay", delay=0.01)
    add_fault(server, stage="rcpt", reply=REFUSAL, times=2)
    add_fault(server, stage="data", action="disconnect")
    with smtp_client(server) as client:
        client.ehlo("client.example")
        client.mail("a@example.com")
        client.rcpt("b@example.com")
        client.rcpt("c@example.com")
        client.rcpt("d@example.com")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.data(MESSAGE)
    assert injected(server) == {
        ("connect", "delay"): 1,
        ("rcpt", "reply"): 2,
        ("data", "disconnect"): 1,
    }


def test_an_acting_rule_logs_one_line_of_its_own_values_and_none_of_the_message(
    server: RunningServer,
) -> None:
    add_fault(server, stage="data", match="b@*", reply=REFUSAL)
    secret = b"Subject: the secret subject\r\n\r\nthe secret body\r\n"
    with (
        capture_logs() as logs,
        smtp_client(server) as client,
        pytest.raises(smtplib.SMTPDataError),
    ):
        client.sendmail("a@example.com", ["b@example.com"], secret)
    (line,) = [entry for entry in logs if entry["event"] == "fault injected"]
    assert line["log_level"] == "info"
    assert {key: line[key] for key in ("stage", "action", "match", "reply")} == {
        "stage": "data",
        "action": "reply",
        "match": "b@*",
        "reply": REFUSAL,
    }
    assert "secret" not in repr(logs), "the log holds the refused message's contents"


FIRST = b"EHLO client.example\r\n"


MAIL = b"MAIL FROM:<a@example.com>\r\n"


@pytest.mark.parametrize(
    ("smtp", "rule", "commands", "own_refusal"),
    [
        ({}, {"stage": "helo", "match": "bad*"}, [b"EHLO bad\x01name\r\n"], b"501"),
        (
            {},
            {"stage": "mail", "match": "a*"},
            [FIRST, b"MAIL FROM:<a\x01@example.com>\r\n"],
            b"553",
        ),
        (
            {"max_inflight_bytes": 1 << 20},
            {"stage": "mail", "match": "a@example.com"},
            [FIRST, b"MAIL FROM:<a@example.com> SIZE=2000000\r\n"],
            b"552",
        ),
        (
            {"max_recipients": 1},
            {"stage": "rcpt", "match": "c@*"},
            [FIRST, MAIL, b"RCPT TO:<b@example.com>\r\n", b"RCPT TO:<c@example.com>\r\n"],
            b"452",
        ),
        (
            {},
            {"stage": "rcpt", "match": "b*"},
            [FIRST, MAIL, b"RCPT TO:<b\x01@example.com>\r\n"],
            b"553",
        ),
    ],
)
def test_a_rule_acts_before_the_servers_own_refusals(
    start_server: Start,
    smtp: dict[str, Any],
    rule: dict[str, str],
    commands: list[bytes],
    own_refusal: bytes,
) -> None:
    running = fault_server(start_server, **smtp)

    def last_reply() -> bytes:
        with raw_smtp(running.port) as raw:
            *before, last = commands
            for command in before:
                raw.send(command)
                assert raw.code() == b"250", f"{command!r} was refused"
            raw.send(last)
            return raw.reply()

    assert last_reply()[:3] == own_refusal, "without a rule the server refuses on its own"
    add_fault(running, **rule, reply="451 4.7.1 The rule first")
    assert last_reply() == b"451 4.7.1 The rule first\r\n"
