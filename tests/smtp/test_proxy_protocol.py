"""The PROXY protocol (v1 and v2) as a load balancer speaks it over a raw socket: from a trusted
address the header must come first and its address is the client's everywhere (the event, the
trace header, the per-address limit, fault rules, /connections, after STARTTLS too); from any
other address a PROXY line is a bad command."""

from __future__ import annotations

import base64
import ipaddress
import smtplib
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailrunner.smtp.server import ConnectionInfo
from support.faults import REFUSAL, add_fault
from support.raw_smtp import ENVELOPE, SOCKET_TIMEOUT, RawSmtp, raw_smtp
from support.server import LOOPS, RunningServer, on_loop
from support.tls import self_signed, trusting
from support.waiting import WAIT_SECONDS, wait_until

Start = Callable[..., RunningServer]

CLIENT = "203.0.113.7"
"""The client's address as the balancer saw it (TEST-NET-3: never this machine's)."""
MESSAGE = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: proxied\r\n\r\nbody\r\n"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
TRUST_LOOPBACK = {"enabled": True, "trusted": ["127.0.0.1/32"], "timeout": 1}
"""The test client connects from 127.0.0.1: as a trusted balancer."""


def v1(client: str = CLIENT, port: int = 40000) -> bytes:
    family = b"TCP6" if ":" in client else b"TCP4"
    server = "2001:db8::25" if ":" in client else "192.0.2.25"
    return b"PROXY %s %s %s %d 25\r\n" % (family, client.encode(), server.encode(), port)


def v2(client: str = CLIENT, port: int = 40000, *, local: bool = False) -> bytes:
    """A v2 header: PROXY (or LOCAL, a balancer's own health check) over TCP."""
    source = ipaddress.ip_address(client)
    target = ipaddress.ip_address("2001:db8::25" if source.version == 6 else "192.0.2.25")
    family = 0x21 if source.version == 6 else 0x11  # AF_INET6 / AF_INET, STREAM
    addresses = source.packed + target.packed + struct.pack("!HH", port, 25)
    command = 0x20 if local else 0x21
    return V2_SIGNATURE + struct.pack("!BBH", command, family, len(addresses)) + addresses


class ProxiedSmtp(RawSmtp):
    """A raw connection through a balancer: the header goes before the greeting is read."""

    def __init__(self, port: int, header: bytes) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT)
        self.buffer = b""
        self.sock.sendall(header)
        self.greeting = self.reply()


class ProxiedSMTP(smtplib.SMTP):
    """smtplib behind a balancer: the connection starts with `header`."""

    header = v1()

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = super()._get_socket(host, port, timeout)
        sock.sendall(self.header)
        return sock


def proxy_server(
    start_server: Start, proxy: dict[str, Any] = TRUST_LOOPBACK, **settings: Any
) -> RunningServer:
    smtp = settings.pop("smtp", {})
    return start_server(smtp={"proxy_protocol": proxy, **smtp}, **settings)


def send(client: RawSmtp) -> None:
    client.send(ENVELOPE + b"DATA\r\n")
    assert client.codes(4) == [b"250", b"250", b"250", b"354"]
    client.send(MESSAGE + b".\r\nQUIT\r\n")
    assert client.codes(2) == [b"250", b"221"]


def connections(server: RunningServer) -> list[ConnectionInfo]:
    async def listed() -> list[ConnectionInfo]:
        return server.app.smtp.connections

    result: list[ConnectionInfo] = server.call(listed())
    return result


@pytest.mark.parametrize("kind", LOOPS)
def test_a_v1_header_makes_its_address_the_clients(start_server: Start, kind: str) -> None:
    server = proxy_server(start_server, server=on_loop(kind))
    client = ProxiedSmtp(server.port, v1())
    try:
        assert client.greeting.startswith(b"220 ")
        wait_until(lambda: bool(connections(server)), "the connection to be listed")
        assert [info.remote_addr for info in connections(server)] == [f"{CLIENT}:40000"]
        send(client)
    finally:
        client.sock.close()
    (event,) = server.delivery.wait_for(1)
    assert event["remote_addr"] == f"{CLIENT}:40000"
    (trace,) = event["message"]["headers"]["Received"]
    assert trace.startswith(f"from client.example ([{CLIENT}])")


@pytest.mark.parametrize("kind", LOOPS)
@pytest.mark.parametrize(
    ("client", "shown"), [(CLIENT, f"{CLIENT}:40001"), ("2001:db8::7", "[2001:db8::7]:40001")]
)
def test_a_v2_header_makes_its_address_the_clients(
    start_server: Start, kind: str, client: str, shown: str
) -> None:
    server = proxy_server(start_server, server=on_loop(kind))
    connection = ProxiedSmtp(server.port, v2(client, 40001))
    try:
        assert connection.greeting.startswith(b"220 ")
        send(connection)
    finally:
        connection.sock.close()
    (event,) = server.delivery.wait_for(1)
    assert event["remote_addr"] == shown


def test_a_v2_local_header_keeps_the_balancers_address(start_server: Start) -> None:
    server = proxy_server(start_server)
    connection = ProxiedSmtp(server.port, v2(local=True))
    try:
        send(connection)
    finally:
        connection.sock.close()
    (event,) = server.delivery.wait_for(1)
    assert event["remote_addr"].startswith("127.0.0.1:")


def test_the_per_address_limit_counts_the_proxied_address(start_server: Start) -> None:
    """Loopback is exempt from the limit; the proxied clients are not, each by its own."""
    server = proxy_server(start_server, smtp={"max_connections_per_ip": 1})
    first = ProxiedSmtp(server.port, v1(CLIENT, 40000))
    try:
        assert first.greeting.startswith(b"220 ")
        second = ProxiedSmtp(server.port, v2(CLIENT, 40001))
        try:
            assert second.greeting == (
                b"421 4.7.0 localhost Too many connections from your address, try again later\r\n"
            )
        finally:
            second.sock.close()
        other = ProxiedSmtp(server.port, v1("203.0.113.8", 40002))
        try:
            assert other.greeting.startswith(b"220 "), "another client behind the same balancer"
        finally:
            other.sock.close()
    finally:
        first.sock.close()


def test_a_connect_fault_rule_matches_the_proxied_address(start_server: Start) -> None:
    server = proxy_server(start_server, smtp={"faults_api": True})
    add_fault(server, stage="connect", match="203.0.113.*", reply=REFUSAL)
    refused = ProxiedSmtp(server.port, v1(CLIENT))
    try:
        assert refused.greeting == REFUSAL.encode() + b"\r\n"
    finally:
        refused.sock.close()
    add_fault(server, stage="connect", match="127.0.0.*", reply=REFUSAL)
    passed = ProxiedSmtp(server.port, v1("198.51.100.1"))
    try:
        assert passed.greeting.startswith(b"220 "), "the balancer's address matched a rule"
    finally:
        passed.sock.close()


@pytest.mark.parametrize("first", [b"EHLO client.example\r\n", b"PROXY TCP4 nonsense\r\n"])
def test_a_trusted_connection_without_a_valid_header_is_closed(
    start_server: Start, first: bytes
) -> None:
    server = proxy_server(start_server)
    connection = ProxiedSmtp(server.port, first)
    try:
        assert connection.greeting == b"", "no greeting before a valid header"
        assert connection.closed()
    finally:
        connection.sock.close()
    assert connections(server) == []


def test_a_trusted_connection_that_sends_nothing_is_closed_after_the_header_timeout(
    start_server: Start,
) -> None:
    server = proxy_server(start_server, {**TRUST_LOOPBACK, "timeout": 0.3})
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_SECONDS) as sock:
        assert sock.recv(100) == b"", "closed without a reply"
    waited = time.monotonic() - started
    assert 0.25 < waited < 3, f"closed after {waited:.2f}s, expected about 0.3s"


def test_an_untrusted_client_sending_a_proxy_line_gets_an_error_reply(start_server: Start) -> None:
    server = proxy_server(start_server, {"enabled": True, "trusted": ["10.0.0.0/8"]})
    with raw_smtp(server.port) as client:
        assert client.greeting.startswith(b"220 "), "an untrusted client is greeted at once"
        client.send(v1())
        assert client.reply() == b'500 Error: command "PROXY" not recognized\r\n'
        send(client)
    (event,) = server.delivery.wait_for(1)
    assert event["remote_addr"].startswith("127.0.0.1:")


def test_the_proxied_address_survives_starttls(start_server: Start, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server = proxy_server(
        start_server, smtp={"tls": {"cert_file": str(cert), "key_file": str(key)}}
    )
    with ProxiedSMTP(server.host, server.port, timeout=WAIT_SECONDS) as client:
        client.ehlo("client.example")
        client.starttls(context=trusting(cert))
        client.ehlo("client.example")
        assert client.sendmail("a@example.com", ["b@example.com"], MESSAGE) == {}
    (event,) = server.delivery.wait_for(1)
    assert event["remote_addr"] == f"{CLIENT}:40000"
    (trace,) = event["message"]["headers"]["Received"]
    assert trace.startswith(f"from client.example ([{CLIENT}])")
    assert " with ESMTPS " in trace


def test_auth_lockouts_count_the_proxied_address(start_server: Start, tmp_path: Path) -> None:
    """The proxied clients are not loopback: the lockout applies to each by its own address."""
    credentials = tmp_path / "users"
    credentials.write_text("alice:{PLAIN}right\n")
    auth = {
        "mode": "verify",
        "credentials_file": str(credentials),
        "allow_insecure": True,
        "max_failures": 1,
    }
    server = proxy_server(start_server, smtp={"auth": auth})

    def login(client_address: str, password: str) -> int:
        client = ProxiedSMTP(timeout=WAIT_SECONDS)
        client.header = v1(client_address)
        try:
            client.connect(server.host, server.port)
            client.ehlo("client.example")
            secret = base64.b64encode(b"\0alice\0" + password.encode()).decode()
            code: int = client.docmd("AUTH", "PLAIN " + secret)[0]
            return code
        finally:
            client.close()

    assert login(CLIENT, "wrong") == 535
    assert login(CLIENT, "wrong") == 421, "one failure too many from the proxied address"
    assert login("203.0.113.8", "right") == 235, "another client behind the same balancer"
