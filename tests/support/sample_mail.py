"""Messages and replies many tests share: one small message with one attachment, the reply a
failed delivery earns, and a send that times its DATA."""

from __future__ import annotations

import smtplib
import time

from support.server import RunningServer

WITH_ATTACHMENT = (
    b"Subject: files\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
    b"Content-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Disposition: attachment; filename=data.bin\r\n\r\nDATA\r\n--b--\r\n"
)
"""A text body and one attachment, `data.bin` holding `DATA`."""

TEMP_FAILURE = (451, b"4.3.0 Temporary failure, try again later")
"""What smtplib reads when delivery failed: the client is to try again later."""


def timed_send(server: RunningServer) -> tuple[tuple[int, bytes], float]:
    """The reply to WITH_ATTACHMENT's DATA, and how long it took from the final dot's send."""
    with smtplib.SMTP(server.host, server.port, timeout=30) as client:
        client.ehlo("client.example")
        client.mail("a@example.com")
        client.rcpt("b@example.com")
        started = time.monotonic()
        reply = client.data(WITH_ATTACHMENT)
        return reply, time.monotonic() - started


def accepted_id(server: RunningServer, message: bytes) -> str:
    """Send `message` from a@example.com to b@example.com; the event id its 250 names."""
    with smtplib.SMTP(server.host, server.port, timeout=30) as client:
        client.ehlo("client.example")
        client.mail("a@example.com")
        client.rcpt("b@example.com")
        code, reply = client.data(message)
    assert code == 250, reply
    return reply.decode().rsplit(" ", 1)[-1]
