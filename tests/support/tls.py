"""What the TLS tests share: a throwaway self-signed certificate made with the openssl command
line tool, the client context that trusts exactly it, and the wait for a TLS close."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path

from aiosmtplib.protocol import SMTPProtocol

from support.requirements import unavailable
from support.server import RunningServer
from support.waiting import WAIT_SECONDS


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1 and its key, written into `directory`."""
    openssl = shutil.which("openssl")
    if openssl is None:
        unavailable("openssl is not installed (apt-get install openssl)")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subject = ["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
    command = [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", *subject]
    subprocess.run(
        [*command, "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True
    )
    return cert, key


def trusting(cert: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    return context


async def connection_lost(protocol: SMTPProtocol | None) -> None:
    """A TLS close is a close_notify exchange that outlives quit(); asyncio.run would close
    the loop under the still-open socket, which Python reports as a leaked transport."""
    async with asyncio.timeout(WAIT_SECONDS):
        while protocol is not None and protocol.transport is not None:  # noqa: ASYNC110 (aiosmtplib has no close waiter)
            await asyncio.sleep(0.01)


def implicit_port(server: RunningServer) -> int:
    """The port the server's implicit-TLS listener took (the config asks for port 0)."""
    address = server.app.smtp.implicit_address
    assert address is not None
    return address[1]
