"""Delivery failures answer 451 4.3.0 without leaking internals; shutdown drains sessions."""

from __future__ import annotations

import asyncio
import smtplib
import socket
from collections.abc import Callable

import pytest

from mailrunner.errors import DeliveryError
from mailrunner.smtp.delivery import Outcome
from support.server import RunningServer
from support.waiting import wait_until

MESSAGE = b"Subject: failing\r\n\r\nbody\r\n"


def test_delivery_error_gives_451_and_the_connection_stays_usable(server: RunningServer) -> None:
    server.delivery.failure = DeliveryError("pipeline is on fire at /secret/path")
    with smtplib.SMTP(server.host, server.port) as client:
        client.ehlo("c")
        client.mail("a@example.com")
        client.rcpt("b@example.com")
        assert client.data(MESSAGE) == (451, b"4.3.0 Temporary failure, try again later")
        server.delivery.failure = None
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    assert len(server.delivery.wait_for(1)) == 1


def test_unexpected_exception_gives_451_not_500_and_resets_the_transaction(
    server: RunningServer,
) -> None:
    server.delivery.failure = RuntimeError("internal detail that must not leak")
    with smtplib.SMTP(server.host, server.port) as client:
        client.ehlo("c")
        client.mail("a@example.com")
        client.rcpt("b@example.com")
        code, reply = client.data(MESSAGE)
        assert (code, reply) == (451, b"4.3.0 Temporary failure, try again later")
        assert b"internal" not in reply
        server.delivery.failure = None
        assert client.mail("a@example.com")[0] == 250, "the failed transaction was left open"
        client.rcpt("b@example.com")
        assert client.data(MESSAGE)[0] == 250


def test_worker_close_outcome_answers_250_then_221_and_closes(server: RunningServer) -> None:
    server.delivery.outcome = Outcome.ACCEPTED_CLOSE
    client = smtplib.SMTP(server.host, server.port)
    client.ehlo("c")
    client.mail("a@example.com")
    client.rcpt("b@example.com")
    assert client.data(MESSAGE)[0] == 250
    assert client.getreply() == (221, b"2.0.0 Bye")
    client.close()


def test_shutdown_lets_data_finish_and_sends_421_to_idle_sessions(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server()
    release = server.hold_deliveries()
    idle = socket.create_connection((server.host, server.port), timeout=5)
    assert idle.recv(1024).startswith(b"220")
    busy = smtplib.SMTP(server.host, server.port, timeout=10)
    busy.ehlo("c")
    busy.mail("a@example.com")
    busy.rcpt("b@example.com")
    busy.send(b"DATA\r\n")
    assert busy.getreply()[0] == 354
    busy.send(MESSAGE + b".\r\n")
    assert server.delivery.entered.wait(5)
    stopping = asyncio.run_coroutine_threadsafe(server.app.stop(), server.loop)
    assert idle.recv(1024) == b"421 4.3.2 localhost Service shutting down, try again later\r\n"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((server.host, server.port), timeout=5)
    release()
    assert busy.getreply()[0] == 250, "the message in DATA must be accepted"
    assert busy.getreply()[0] == 421
    stopping.result(10)
    wait_until(lambda: server.connection_count() == 0, "every connection to close")
    idle.close()
    busy.close()
    assert len(server.delivery.wait_for(1)) == 1
