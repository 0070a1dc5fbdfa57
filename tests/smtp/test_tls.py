"""STARTTLS: offered with a certificate, demanded with `required`, refused cleanly without.

The TLS sessions run on both event loops: aiosmtpd wraps the loop's transport in asyncio's
SSL protocol, which uvloop's transports must carry as asyncio's do.
The certificate is a throwaway self-signed one made with the openssl command line tool;
clients are told to trust exactly it.
"""

from __future__ import annotations

import asyncio
import smtplib
import subprocess
from collections.abc import Callable
from pathlib import Path

import aiosmtplib
import pytest

from support.processes import run_cli
from support.raw_smtp import raw_smtp
from support.server import LOOPS, RunningServer, on_loop
from support.tls import connection_lost, self_signed, trusting

MESSAGE = b"Subject: over tls\r\nFrom: a@example.com\r\n\r\nsecret body\r\n"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(params=LOOPS)
def tls_server(
    start_server: Callable[..., RunningServer],
    certificate: tuple[Path, Path],
    request: pytest.FixtureRequest,
) -> Callable[..., RunningServer]:
    """Servers with the certificate, each test once per event loop."""
    cert, key = certificate
    loop = on_loop(request.param)

    def start(required: bool = False) -> RunningServer:
        tls = {"cert_file": str(cert), "key_file": str(key), "required": required}
        return start_server(server=loop, smtp={"tls": tls})

    return start


def test_starttls_is_offered_and_the_message_arrives_encrypted(
    tls_server: Callable[..., RunningServer], certificate: tuple[Path, Path]
) -> None:
    server = tls_server()
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.ehlo("tls.client")
        assert client.has_extn("starttls")
        client.starttls(context=trusting(certificate[0]))
        client.ehlo("tls.client")
        assert client.sendmail("a@example.com", ["b@example.com"], MESSAGE) == {}
        client.mail("a@example.com")
        client.rcpt("c@example.com")
        assert client.data(MESSAGE)[0] == 250
    first, second = server.delivery.wait_for(2)
    assert first["message"]["body"] == "secret body\n"
    assert first["uuid"] == second["uuid"], "STARTTLS keeps the connection's id"
    trace = first["message"]["headers"]["Received"][0]
    assert " with ESMTPS id " in trace


def test_a_plain_session_still_works_when_tls_is_only_offered(
    tls_server: Callable[..., RunningServer],
) -> None:
    server = tls_server()
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        assert client.sendmail("a@example.com", ["b@example.com"], MESSAGE) == {}
    (event,) = server.delivery.wait_for(1)
    assert " with ESMTP id " in event["message"]["headers"]["Received"][0]


def test_required_tls_refuses_mail_before_starttls(
    tls_server: Callable[..., RunningServer], certificate: tuple[Path, Path]
) -> None:
    server = tls_server(required=True)

    async def session() -> tuple[int, int]:
        client = aiosmtplib.SMTP(hostname=server.host, port=server.port, start_tls=False)
        await client.connect()
        try:
            await client.ehlo()
            refused, _ = await client.execute_command(b"MAIL", b"FROM:<a@example.com>")
            await client.starttls(tls_context=trusting(certificate[0]))
            await client.ehlo()
            await client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
            return refused, len(server.delivery.wait_for(1))
        finally:
            protocol = client.protocol
            await client.quit()
            await connection_lost(protocol)

    refused, delivered = asyncio.run(session())
    assert refused == 530, "530 Must issue a STARTTLS command first"
    assert delivered == 1


def test_required_refuses_bdat_before_starttls_and_drops_its_chunk(
    tls_server: Callable[..., RunningServer],
) -> None:
    """The chunk is the message, not commands: were it parsed, its QUIT would close."""
    server = tls_server(required=True)
    chunk = b"RSET\r\nQUIT\r\n"
    with raw_smtp(server.port) as client:
        client.send(b"EHLO tls.client\r\nBDAT %d LAST\r\n%sNOOP\r\n" % (len(chunk), chunk))
        assert client.code() == b"250"
        assert client.reply() == b"530 Must issue a STARTTLS command first\r\n"
        assert client.code() == b"250", "NOOP, the command after the chunk"
        client.send(b"MAIL FROM:<a@example.com>\r\n")
        assert client.code() == b"530", "every other command is still refused"


def test_without_a_certificate_starttls_is_not_offered_and_refused(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server()
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.ehlo("c")
        assert not client.has_extn("starttls")
        assert client.docmd("STARTTLS")[0] == 454
        assert client.sendmail("a@example.com", ["b@example.com"], MESSAGE) == {}


@pytest.mark.swaks
def test_swaks_delivers_over_starttls(tls_server: Callable[..., RunningServer], swaks: str) -> None:
    server = tls_server(required=True)
    result = subprocess.run(
        [swaks, "--to", "b@example.com", "--server", f"{server.host}:{server.port}", "--tls"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "250 2.0.0 OK: queued as" in result.stdout
    (event,) = server.delivery.wait_for(1)
    assert " with ESMTPS id " in event["message"]["headers"]["Received"][0]


def test_a_certificate_that_cannot_be_loaded_stops_the_start_with_its_key_path(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    missing = {"cert_file": str(tmp_path / "no.pem"), "key_file": str(tmp_path / "no.key")}
    with pytest.raises(Exception, match=r"smtp\.tls: cannot load"):
        start_server(smtp={"tls": missing})


def test_config_check_loads_the_certificate_too(tmp_path: Path) -> None:
    config = tmp_path / "tls.yaml"
    config.write_text(
        "smtp: {tls: {cert_file: /nonexistent/cert.pem, key_file: /nonexistent/key.pem}}\n"
        "jobs: {pipelines: {smtp-emails: {driver: memory}}}\n"
    )
    result = run_cli("config", "check", "-c", str(config))
    assert result.returncode == 1
    assert "smtp.tls: cannot load /nonexistent/cert.pem" in result.stderr
