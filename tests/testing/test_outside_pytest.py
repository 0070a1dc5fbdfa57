"""`mailrunner.testing.server()` and `aserver()`: the same server and Mailbox for code that
is not a pytest test (unittest, behave, a script), and what they leave behind: nothing."""

from __future__ import annotations

import asyncio
import logging
import smtplib
import socket
from collections.abc import Iterator
from email.message import EmailMessage

import aiosmtplib
import pytest
import structlog
from structlog.testing import capture_logs

from mailrunner.testing import InProcessServer, aserver, server


def send(srv: InProcessServer, to: str, subject: str) -> None:
    with smtplib.SMTP(srv.smtp_host, srv.smtp_port, timeout=10) as client:
        client.sendmail("app@example.com", [to], f"Subject: {subject}\r\n\r\nhi\r\n".encode())


def test_a_server_block_receives_mail_and_its_mailbox_fails_with_assertion_errors() -> None:
    with server() as srv:
        send(srv, "ada@example.com", "Welcome")

        assert srv.mailbox.wait_for(to="ada@example.com").message.subject == "Welcome"
        with pytest.raises(AssertionError, match=r"(?s)within 0.2s.*subject 'Welcome'"):
            srv.mailbox.wait_for(subject="Reset", timeout=0.2)


def test_a_stopped_server_listens_no_more_and_its_data_dir_is_gone() -> None:
    with server() as srv:
        data_dir = srv.config.data_dir
        assert (data_dir / "inbox.db").exists()

    assert not data_dir.exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((srv.smtp_host, srv.smtp_port), timeout=5).close()


def test_an_async_server_block_serves_its_own_loop() -> None:
    async def main() -> str:
        async with aserver(smtp={"hostname": "mx.async.example"}) as srv:
            message = EmailMessage()
            message["From"], message["To"], message["Subject"] = "a@x.example", "b@x.example", "Hi"
            message.set_content("hello")
            waiting = asyncio.create_task(srv.mailbox.await_for(to="b@x.example"))
            await aiosmtplib.send(message, hostname=srv.smtp_host, port=srv.smtp_port)
            return (await asyncio.wait_for(waiting, 10)).message.subject

    assert asyncio.run(main()) == "Hi"


@pytest.fixture
def unconfigured_structlog() -> Iterator[None]:
    """A program that never configured structlog (this suite's capture_logs does, for
    good: structlog counts restoring its processors as configuring)."""
    saved, was_configured = structlog.get_config(), structlog.is_configured()
    structlog.reset_defaults()
    yield
    if was_configured:
        structlog.configure(**saved)
    else:
        structlog.reset_defaults()


@pytest.mark.usefixtures("unconfigured_structlog")
def test_the_servers_log_lines_are_records_of_stdlib_loggers_not_output(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailrunner")
    with server() as srv:
        send(srv, "ada@example.com", "Welcome")
        srv.mailbox.wait_for(to="ada@example.com")

    assert any(r.getMessage().startswith("message accepted") for r in caplog.records)
    assert capfd.readouterr() == ("", ""), "the server printed its log"
    assert not structlog.is_configured(), "structlog is left as the server found it"


def test_a_program_that_configured_structlog_keeps_its_setup() -> None:
    with capture_logs() as lines, server() as srv:
        send(srv, "ada@example.com", "Welcome")
        srv.mailbox.wait_for(to="ada@example.com")

    assert "message accepted" in [line["event"] for line in lines]
