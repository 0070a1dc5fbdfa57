"""Every limit answers with its own reply code and leaves the connection or server usable."""

from __future__ import annotations

import smtplib
import socket
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import cast

import pytest

from mailrunner.config import SmtpConfig
from mailrunner.metrics import Metrics
from mailrunner.smtp.handler import SmtpHandler
from mailrunner.smtp.protocol import MailrunnerSMTP
from mailrunner.smtp.server import SmtpServer
from support.server import RunningServer
from support.waiting import wait_until

MESSAGE = b"Subject: limit\r\n\r\nbody\r\n"


def read_reply(sock: socket.socket) -> bytes:
    """Read one complete (possibly multi-line) SMTP reply."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
        lines = data.split(b"\r\n")
        if len(lines) > 1 and len(lines[-2]) >= 4 and lines[-2][3:4] == b" ":
            return data


def test_message_over_max_size_gets_552_and_connection_stays_usable(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(smtp={"max_message_size": 1000})
    with smtplib.SMTP(server.host, server.port) as client:
        client.ehlo("c")
        assert client.esmtp_features["size"] == "1000"
        client.mail("a@example.com")
        client.rcpt("b@example.com")
        code, reply = client.data(MESSAGE + b"x" * 80 + b"\r\n" * 20 + b"y" * 900 + b"\r\n")
        assert (code, reply) == (552, b"5.3.4 Message size exceeds fixed maximum message size")
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    assert len(server.delivery.wait_for(1)) == 1


def test_declared_size_over_limit_is_refused_at_mail_from(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(smtp={"max_message_size": 1000})
    with smtplib.SMTP(server.host, server.port) as client:
        client.ehlo("c")
        code, reply = client.docmd("MAIL FROM:<a@example.com> SIZE=1001")
        assert (code, reply) == (552, b"5.3.4 Message size exceeds fixed maximum message size")
        assert client.docmd("MAIL FROM:<a@example.com> SIZE=1000")[0] == 250


def test_zero_max_size_means_unlimited(start_server: Callable[..., RunningServer]) -> None:
    server = start_server(smtp={"max_message_size": 0})
    with smtplib.SMTP(server.host, server.port) as client:
        client.ehlo("c")
        assert not client.has_extn("size")
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE + (b"z" * 900 + b"\r\n") * 2000)
    (event,) = server.delivery.wait_for(1)
    assert event["envelope"]["size"] > 1_000_000


def test_recipients_over_limit_get_452(start_server: Callable[..., RunningServer]) -> None:
    server = start_server(smtp={"max_recipients": 3})
    with smtplib.SMTP(server.host, server.port) as client:
        client.ehlo("c")
        client.mail("a@example.com")
        for index in range(3):
            assert client.rcpt(f"r{index}@example.com")[0] == 250
        assert client.rcpt("r3@example.com") == (452, b"4.5.3 Too many recipients")
        assert client.data(MESSAGE)[0] == 250
    (event,) = server.delivery.wait_for(1)
    assert event["envelope"]["to"] == ["r0@example.com", "r1@example.com", "r2@example.com"]


def test_connections_over_limit_get_421_and_others_keep_working(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(smtp={"max_connections": 2})
    first = smtplib.SMTP(server.host, server.port)
    second = smtplib.SMTP(server.host, server.port)
    wait_until(lambda: server.connection_count() == 2, "two admitted connections")
    with socket.create_connection((server.host, server.port), timeout=5) as third:
        reply = read_reply(third)
        assert reply.startswith(b"421 4.7.0 localhost Too many connections"), reply
        assert third.recv(100) == b"", "a refused connection must be closed"
    first.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    first.quit()
    wait_until(lambda: server.connection_count() == 1, "the first connection to go")
    with smtplib.SMTP(server.host, server.port) as fourth:
        fourth.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    second.quit()
    assert len(server.delivery.wait_for(2)) == 2


def test_idle_client_gets_421_and_is_disconnected(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(smtp={"read_timeout": 0.5})
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        assert read_reply(sock).startswith(b"220 ")
        started = time.monotonic()  # before EHLO: the idle clock restarts after its reply
        sock.sendall(b"EHLO c\r\n")
        read_reply(sock)
        reply = read_reply(sock)
        waited = time.monotonic() - started
        assert reply == b"421 4.4.2 localhost Error: timeout exceeded, closing connection\r\n"
        assert sock.recv(100) == b""
    assert 0.45 < waited < 3, f"idle timeout fired after {waited:.2f}s, expected about 0.5s"


def test_trickling_data_slower_than_timeout_is_not_cut_off(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(smtp={"read_timeout": 0.6})
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        read_reply(sock)
        for command in (b"EHLO c", b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.com>"):
            sock.sendall(command + b"\r\n")
            read_reply(sock)
        sock.sendall(b"DATA\r\n")
        assert read_reply(sock).startswith(b"354")
        sock.sendall(b"Subject: slow\r\n\r\n")
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            sock.sendall(b"x")
            time.sleep(0.1)
        sock.sendall(b"\r\n.\r\n")
        assert read_reply(sock).startswith(b"250 2.0.0 OK"), "trickled DATA must be accepted"
    (event,) = server.delivery.wait_for(1)
    assert event["message"]["body"].startswith("xxxxxxxxxx")


def test_noop_forever_is_ended_by_the_session_timeout(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(smtp={"read_timeout": 5, "session_timeout": 0.8})
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        read_reply(sock)
        started = time.monotonic()
        replies = b""
        while b"421" not in replies:
            sock.sendall(b"NOOP\r\n")
            reply = read_reply(sock)
            assert reply, "connection closed without a 421"
            replies += reply
            assert time.monotonic() - started < 4, "session timeout never fired"
        assert b"421 4.4.2 localhost Error: session too long" in replies


@pytest.mark.parametrize(
    "command",
    [b"DATA", b"BDAT 99999999999999999999 LAST", b"AUTH LOGIN"],
    ids=["data", "bdat", "auth login answer"],
)
def test_octets_trickled_forever_are_ended_by_the_session_timeout(
    start_server: Callable[..., RunningServer], command: bytes
) -> None:
    """Only the client ends a DATA, a BDAT chunk or an answer to AUTH's challenge: the
    session timeout does not wait for it (it used to, so a trickle of bytes held the
    connection for good)."""
    server = start_server(smtp={"read_timeout": 5, "session_timeout": 0.8})
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        read_reply(sock)
        envelope = [b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.com>"]
        for line in [b"EHLO c", *(envelope if command != b"AUTH LOGIN" else [])]:
            sock.sendall(line + b"\r\n")
            read_reply(sock)
        sock.sendall(command + b"\r\n")
        if command in (b"DATA", b"AUTH LOGIN"):
            assert read_reply(sock)[:3] in (b"354", b"334")
        started = time.monotonic()
        sock.settimeout(0.1)
        replies = b""
        while b"\r\n" not in replies:
            assert time.monotonic() - started < 4, "session timeout never fired"
            try:  # read first: bytes sent after the close would reset the connection
                replies += sock.recv(4096)
            except TimeoutError:
                sock.sendall(b"x" * 100)  # never a line end: no answer to AUTH either
        assert replies.startswith(b"421 4.4.2 localhost Error: session too long"), replies


def test_slow_delivery_is_not_cut_by_the_read_timeout(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(smtp={"read_timeout": 0.3})
    release = server.hold_deliveries()
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.ehlo("c")
        client.mail("a@example.com")
        client.rcpt("b@example.com")
        client.send(b"DATA\r\n")
        assert client.getreply()[0] == 354
        client.send(MESSAGE + b".\r\n")
        assert server.delivery.entered.wait(5)
        time.sleep(1.0)  # the read timeout is 0.3 s: prove the wait for delivery outlasts it
        release()
        assert client.getreply()[0] == 250
    assert len(server.delivery.wait_for(1)) == 1


@pytest.mark.parametrize("bad", ["-1", "x"])
def test_bad_size_parameter_is_a_syntax_error(server: RunningServer, bad: str) -> None:
    with smtplib.SMTP(server.host, server.port) as client:
        client.ehlo("c")
        assert client.docmd(f"MAIL FROM:<a@example.com> SIZE={bad}")[0] == 501


def test_loopback_clients_are_not_limited_per_address_by_default(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(smtp={"max_connections_per_ip": 2})
    clients = [socket.create_connection((server.host, server.port), timeout=5) for _ in range(4)]
    try:
        for client in clients:
            assert read_reply(client).startswith(b"220 "), "loopback must be exempt by default"
    finally:
        for client in clients:
            client.close()


def test_connections_from_one_address_over_the_limit_get_421_and_close(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(smtp={"max_connections_per_ip": 2, "limit_loopback": True})
    first = smtplib.SMTP(server.host, server.port)
    second = smtplib.SMTP(server.host, server.port)
    with socket.create_connection((server.host, server.port), timeout=5) as third:
        reply = read_reply(third)
        assert reply == (
            b"421 4.7.0 localhost Too many connections from your address, try again later\r\n"
        )
        assert third.recv(100) == b"", "a refused connection must be closed"
    first.quit()
    wait_until(lambda: server.connection_count() == 1, "the first connection to go")
    with smtplib.SMTP(server.host, server.port) as fourth:
        fourth.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    second.quit()
    assert len(server.delivery.wait_for(1)) == 1


def test_an_ipv6_client_is_counted_by_its_64_not_by_each_address() -> None:
    """A host holds a whole /64: counted per address, one client could open every
    connection the server has from fresh addresses."""
    config = SmtpConfig(max_connections_per_ip=1)
    server = SmtpServer(config, cast(SmtpHandler, None), Metrics())

    class Peer:
        """Only what admission reads of a connection: where it came from."""

        def __init__(self, host: str) -> None:
            self.mail_session = SimpleNamespace(remote_host=host)

    def peer(host: str) -> MailrunnerSMTP:
        return cast(MailrunnerSMTP, Peer(host))

    assert server.admit(peer("2001:db8:1:2::1")) is None
    assert server.admit(peer("2001:db8:1:2:ffff::9")) is not None, "same /64 admitted twice"
    assert server.admit(peer("2001:db8:1:3::1")) is None, "another /64 is another client"
    assert server.admit(peer("192.0.2.1")) is None
    assert server.admit(peer("::ffff:192.0.2.1")) is not None, "IPv4-mapped is that IPv4"
