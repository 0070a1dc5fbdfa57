"""Implicit TLS (RFC 8314): `smtp.tls.implicit_addr` speaks TLS from the first byte, with the
certificate, limits, fault rules and handler of the plain listener.

Each test runs on both event loops: the implicit listener is the loop's own TLS server
(asyncio's or uvloop's), not aiosmtpd's STARTTLS wrapper.
"""

from __future__ import annotations

import asyncio
import smtplib
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from mailrunner.api import routes
from mailrunner.api.client import call_once
from mailrunner.config import config_from_mapping
from mailrunner.errors import ConfigError
from support.faults import REFUSAL, REFUSED, add_fault
from support.server import LOOPS, RunningServer, on_loop
from support.tls import connection_lost, implicit_port, self_signed, trusting
from support.waiting import WAIT_SECONDS, wait_until

MESSAGE = b"Subject: implicit tls\r\nFrom: a@example.com\r\n\r\nsecret body\r\n"
Start = Callable[..., RunningServer]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(params=LOOPS)
def implicit_server(
    start_server: Start, certificate: tuple[Path, Path], request: pytest.FixtureRequest
) -> Start:
    """Servers with an implicit-TLS listener beside the plain one, once per event loop."""
    cert, key = certificate
    loop = on_loop(request.param)

    def start(*, required: bool = False, **smtp: Any) -> RunningServer:
        tls = {
            "cert_file": str(cert),
            "key_file": str(key),
            "required": required,
            "implicit_addr": "127.0.0.1:0",
        }
        return start_server(server=loop, smtp={"tls": tls, **smtp})

    return start


@contextmanager
def ssl_client(server: RunningServer, certificate: tuple[Path, Path]) -> Iterator[smtplib.SMTP_SSL]:
    context = trusting(certificate[0])
    with smtplib.SMTP_SSL(
        server.host, implicit_port(server), context=context, timeout=WAIT_SECONDS
    ) as client:
        yield client


def test_smtp_ssl_sends_over_implicit_tls_without_starttls_offered(
    implicit_server: Start, certificate: tuple[Path, Path]
) -> None:
    server = implicit_server()
    with ssl_client(server, certificate) as client:
        client.ehlo("tls.client")
        assert not client.has_extn("starttls")
        assert client.has_extn("auth")
        assert client.docmd("STARTTLS")[0] == 454, "TLS is on already"
        assert client.sendmail("a@example.com", ["b@example.com"], MESSAGE) == {}
        client.user, client.password = "alice", "wonderland"
        assert client.auth("PLAIN", client.auth_plain)[0] == 235
        assert client.sendmail("a@example.com", ["c@example.com"], MESSAGE) == {}
    first, second = server.delivery.wait_for(2)
    assert first["message"]["body"] == "secret body\n"
    assert " with ESMTPS id " in first["message"]["headers"]["Received"][0]
    assert " with ESMTPSA id " in second["message"]["headers"]["Received"][0]
    assert second["authentication"]["username"] == "alice"
    assert first["uuid"] == second["uuid"]


def test_aiosmtplib_sends_over_implicit_tls(
    implicit_server: Start, certificate: tuple[Path, Path]
) -> None:
    server = implicit_server()

    async def send() -> None:
        client = aiosmtplib.SMTP(
            hostname=server.host,
            port=implicit_port(server),
            use_tls=True,
            tls_context=trusting(certificate[0]),
            timeout=WAIT_SECONDS,
        )
        await client.connect()
        try:
            await client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
        finally:
            protocol = client.protocol
            await client.quit()
            await connection_lost(protocol)

    asyncio.run(send())
    (event,) = server.delivery.wait_for(1)
    assert " with ESMTPS id " in event["message"]["headers"]["Received"][0]


def test_required_tls_refuses_mail_on_the_plain_port_only(
    implicit_server: Start, certificate: tuple[Path, Path]
) -> None:
    server = implicit_server(required=True)
    with smtplib.SMTP(server.host, server.port, timeout=WAIT_SECONDS) as plain:
        plain.ehlo("plain.client")
        assert plain.mail("a@example.com")[0] == 530
    with ssl_client(server, certificate) as client:
        client.ehlo("tls.client")
        assert client.mail("a@example.com")[0] == 250
        assert client.rcpt("b@example.com")[0] == 250
        assert client.data(MESSAGE)[0] == 250
    (event,) = server.delivery.wait_for(1)
    assert " with ESMTPS id " in event["message"]["headers"]["Received"][0]


def test_a_plaintext_client_gets_no_greeting_and_the_listener_serves_on(
    implicit_server: Start, certificate: tuple[Path, Path]
) -> None:
    server = implicit_server()
    with socket.create_connection((server.host, implicit_port(server)), timeout=5) as raw:
        raw.sendall(b"EHLO plain.client\r\n")
        received = b""
        while chunk := raw.recv(4096):  # the server ends the failed handshake by closing
            received += chunk
        assert not received.startswith(b"220"), received
    assert server.connection_count() == 0, "a failed handshake is never a session"
    with ssl_client(server, certificate) as client:
        assert client.sendmail("a@example.com", ["b@example.com"], MESSAGE) == {}
    assert len(server.delivery.wait_for(1)) == 1


def test_a_client_that_never_starts_the_handshake_is_closed_after_the_read_timeout(
    implicit_server: Start,
) -> None:
    server = implicit_server(read_timeout=0.5)
    with socket.create_connection((server.host, implicit_port(server)), timeout=5) as silent:
        started = time.monotonic()
        assert silent.recv(100) == b"", "closed without a byte: there was no TLS to reply in"
        assert time.monotonic() - started >= 0.4, "the client had its read timeout to begin"


def test_max_connections_counts_both_listeners_together(
    implicit_server: Start, certificate: tuple[Path, Path]
) -> None:
    server = implicit_server(max_connections=2)
    plain = smtplib.SMTP(server.host, server.port, timeout=WAIT_SECONDS)
    try:
        with ssl_client(server, certificate) as tls:
            wait_until(lambda: server.connection_count() == 2, "one connection on each port")
            with (
                pytest.raises(smtplib.SMTPConnectError) as refused,
                ssl_client(server, certificate),
            ):
                pass
            assert refused.value.smtp_code == 421
            with pytest.raises(smtplib.SMTPConnectError) as refused_plain:
                smtplib.SMTP(server.host, server.port, timeout=WAIT_SECONDS)
            assert refused_plain.value.smtp_code == 421
            assert tls.sendmail("a@example.com", ["b@example.com"], MESSAGE) == {}
    finally:
        plain.quit()
    assert len(server.delivery.wait_for(1)) == 1


def test_a_connect_fault_rule_answers_on_the_implicit_port(
    implicit_server: Start, certificate: tuple[Path, Path]
) -> None:
    server = implicit_server(faults_api=True)
    add_fault(server, stage="connect", action="reply", reply=REFUSAL, times=1)
    with pytest.raises(smtplib.SMTPConnectError) as refused, ssl_client(server, certificate):
        pass
    assert (refused.value.smtp_code, refused.value.smtp_error) == REFUSED
    with ssl_client(server, certificate) as client:
        assert client.sendmail("a@example.com", ["b@example.com"], MESSAGE) == {}


def test_the_connections_api_lists_implicit_tls_sessions(
    implicit_server: Start, certificate: tuple[Path, Path]
) -> None:
    server = implicit_server()
    with ssl_client(server, certificate) as client:
        client.ehlo("tls.client")
        local_port = client.sock.getsockname()[1]
        listed = call_once(server.api_url, None, routes.CONNECTIONS, timeout=WAIT_SECONDS)
        (connection,) = listed.connections
        assert connection.remote_addr == f"127.0.0.1:{local_port}"
        assert connection.helo == "tls.client"
        assert connection.tls is True


def test_stop_closes_both_listeners(implicit_server: Start, certificate: tuple[Path, Path]) -> None:
    server = implicit_server()
    ports = (server.port, implicit_port(server))
    with ssl_client(server, certificate) as client:
        client.ehlo("tls.client")
    server.call(server.app.smtp.stop(grace=WAIT_SECONDS))
    for port in ports:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((server.host, port), timeout=5).close()


def test_implicit_tls_needs_a_certificate() -> None:
    with pytest.raises(ConfigError, match=r"implicit_addr: needs cert_file and key_file"):
        config_from_mapping({"smtp": {"tls": {"implicit_addr": "127.0.0.1:1465"}}})


def test_implicit_tls_cannot_share_the_plain_address(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    tls = {"cert_file": str(cert), "key_file": str(key), "implicit_addr": "127.0.0.1:1025"}
    with pytest.raises(ConfigError, match=r"tls\.implicit_addr: must differ from smtp\.addr"):
        config_from_mapping({"smtp": {"addr": "127.0.0.1:1025", "tls": tls}})


def test_a_taken_implicit_port_stops_the_start(
    start_server: Start, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        tls = {"cert_file": str(cert), "key_file": str(key), "implicit_addr": f"127.0.0.1:{port}"}
        with pytest.raises(OSError, match="address already in use"):
            start_server(smtp={"tls": tls})
