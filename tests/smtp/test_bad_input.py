"""Bad input on the wire: every case gets a clear reply, adds no message, and stops nothing.

Raw sockets send exact bytes, so each test can say which octets reached the server and
which reply octets came back. After each bad session a fresh smtplib client must still get
a message through, and the number of delivered events must be exactly what the good
transactions account for.
"""

from __future__ import annotations

import base64
import json
import re
import smtplib
import socket
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from mailrunner import __version__
from support.server import RunningServer
from support.waiting import wait_until

SOCKET_TIMEOUT = 5.0
QUIET_SECONDS = 0.5

MAIL_FROM = b"MAIL FROM:<a@example.com>\r\n"
RCPT_TO = b"RCPT TO:<b@example.com>\r\n"

SENDER_OK = b"250 2.1.0 Sender OK\r\n"
RECIPIENT_OK = b"250 2.1.5 Recipient OK\r\n"
GO_AHEAD = b"354 End data with <CR><LF>.<CR><LF>\r\n"
NOOP_OK = b"250 OK\r\n"
BYE = b"221 2.0.0 Bye\r\n"
BAD_SYNTAX = b"500 Error: bad syntax\r\n"
COMMAND_TOO_LONG = b"500 Command line too long\r\n"
DATA_LINE_TOO_LONG = (
    b"500 5.5.2 Line too long: at most 1000 bytes per line (RFC 5321 4.5.3.1.6)\r\n"
)
TOO_MANY_UNKNOWN = b"502 5.5.1 Too many unrecognized commands, goodbye.\r\n"
NEED_MAIL = b"503 Error: need MAIL command\r\n"
QUEUED = re.compile(rb"250 2\.0\.0 OK: queued as ([0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12})\r\n")
# RFC 5321 section 4.2: reply-line = code [ "-" / SP textstring ] CRLF, textstring = HT / 32-126.
RFC5321_REPLY_LINE = re.compile(rb"[2-5][0-9]{2}(?:[ -][\t\x20-\x7e]*)?")

# aiosmtpd's BOGUS_LIMIT: the fifth unrecognised command of a connection ends it with 502.
UNKNOWN_COMMAND_BUDGET = 5


def unknown(command: bytes) -> bytes:
    """aiosmtpd's reply to an unrecognised (upper-cased) command verb."""
    return b'500 Error: command "' + command.upper() + b'" not recognized\r\n'


class RawClient:
    """A socket client that speaks SMTP byte for byte and reads whole replies."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.sock = socket.create_connection((server.host, server.port), timeout=SOCKET_TIMEOUT)
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        """One complete reply: lines up to the first whose fourth octet is a space."""
        while True:
            start = 0
            while (end := self.buffer.find(b"\r\n", start)) != -1:
                line = self.buffer[start:end]
                start = end + 2
                if len(line) == 3 or line[3:4] == b" ":
                    reply, self.buffer = self.buffer[:start], self.buffer[start:]
                    return reply
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                pytest.fail(f"no complete reply within {SOCKET_TIMEOUT}s; got {self.buffer!r}")
            if not chunk:
                pytest.fail(f"server closed the connection mid-reply; got {self.buffer!r}")
            self.buffer += chunk

    def expect(self, expected: bytes, what: str) -> None:
        got = self.reply()
        assert got == expected, f"{what}: expected {expected!r}, got {got!r}"

    def command(self, line: bytes, expected: bytes, what: str) -> None:
        self.send(line)
        self.expect(expected, what)

    def queued(self, what: str) -> str:
        """Read a `250 ... queued as <id>` reply and return the event id."""
        got = self.reply()
        match = QUEUED.fullmatch(got)
        assert match is not None, f"{what}: expected '250 2.0.0 OK: queued as <id>', got {got!r}"
        return match.group(1).decode("ascii")

    def greeting(self) -> None:
        self.expect(f"220 localhost ESMTP mailrunner {__version__}\r\n".encode(), "greeting")

    def ehlo(self, line: bytes = b"EHLO client.example\r\n") -> None:
        self.command(line, ehlo_reply(self.server), "EHLO")

    def start_data(self) -> None:
        """EHLO, MAIL, RCPT and DATA, each with its exact reply."""
        self.ehlo()
        self.command(MAIL_FROM, SENDER_OK, "MAIL FROM")
        self.command(RCPT_TO, RECIPIENT_OK, "RCPT TO")
        self.command(b"DATA\r\n", GO_AHEAD, "DATA")

    def assert_silent(self, why: str) -> None:
        """Nothing may arrive for a short while (a read with a socket timeout, no sleep)."""
        self.sock.settimeout(QUIET_SECONDS)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return
        finally:
            self.sock.settimeout(SOCKET_TIMEOUT)
        pytest.fail(f"{why}: server sent {self.buffer + chunk!r}")

    def rest_until_closed(self) -> bytes:
        """Everything the server sends until it closes the connection."""
        data, self.buffer = self.buffer, b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                pytest.fail(f"connection still open after {SOCKET_TIMEOUT}s; got {data!r}")
            if not chunk:
                return data
            data += chunk

    def quit(self) -> None:
        """QUIT must get exactly `221` and a clean close: no reply lines left over."""
        self.send(b"QUIT\r\n")
        rest = self.rest_until_closed()
        assert rest == BYE, f"after QUIT expected exactly {BYE!r} then close, got {rest!r}"


@contextmanager
def raw_client(server: RunningServer) -> Iterator[RawClient]:
    client = RawClient(server)
    try:
        client.greeting()
        yield client
    finally:
        client.close()


def ehlo_reply(server: RunningServer) -> bytes:
    size = server.config.smtp.max_message_size
    return (
        f"250-localhost\r\n250-PIPELINING\r\n250-SIZE {size}\r\n250-8BITMIME\r\n"
        "250-SMTPUTF8\r\n250-AUTH LOGIN PLAIN\r\n250-CHUNKING\r\n250 HELP\r\n"
    ).encode()


def raw_of(event: dict[str, Any]) -> bytes:
    return base64.b64decode(event["message"]["raw"])


def assert_event_count(server: RunningServer, expected: int, what: str) -> None:
    got = len(server.delivery.events)
    assert got == expected, f"{what}: expected {expected} delivered events, got {got}"


def assert_still_serves(server: RunningServer, events_before: int) -> None:
    """A fresh smtplib client gets a message through, and it is the only new event."""
    subject = f"still serving after {events_before} events"
    message = f"Subject: {subject}\r\n\r\nfresh\r\n".encode()
    with smtplib.SMTP(server.host, server.port, timeout=SOCKET_TIMEOUT) as client:
        client.ehlo("fresh.example")
        refused = client.sendmail("fresh@example.com", ["ok@example.com"], message)
        assert refused == {}, f"fresh client refused: {refused}"
    events = server.delivery.wait_for(events_before + 1)
    assert len(events) == events_before + 1, (
        f"expected exactly one new event from the fresh client, got {len(events) - events_before}"
    )
    assert events[-1]["message"]["subject"] == subject, "the newest event is not the fresh one"


@pytest.fixture
def raw_server(start_server: Callable[..., RunningServer]) -> RunningServer:
    """A default server whose events carry the exact DATA bytes in `message.raw`."""
    return start_server(smtp={"include_raw": True})


# --- garbage commands ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param(b"xQ7#!\r\n", unknown(b"xQ7#!"), id="printable-unknown-verb"),
        pytest.param(b"\xff\xfe\x80garbage\r\n", BAD_SYNTAX, id="invalid-utf8-bytes"),
        pytest.param("ÜBER alles\r\n".encode(), BAD_SYNTAX, id="non-ascii-verb"),
        pytest.param(b"\r\n", BAD_SYNTAX, id="empty-line"),
        pytest.param(b"   \r\n", unknown(b""), id="only-spaces"),
    ],
)
def test_garbage_command_gets_500_and_the_session_continues(
    server: RunningServer, line: bytes, expected: bytes
) -> None:
    with raw_client(server) as client:
        client.command(line, expected, f"reply to garbage {line!r}")
        client.command(b"NOOP\r\n", NOOP_OK, "NOOP after garbage (session must go on)")
        client.ehlo()
        client.quit()
    assert_event_count(server, 0, "garbage commands")
    assert_still_serves(server, 0)


@pytest.mark.parametrize(
    "verb",
    [
        pytest.param(b"\x00\x01", id="nul-and-soh"),
        pytest.param(b"FOO\rBAR", id="bare-cr"),
        pytest.param(b"\x1b[31mX", id="terminal-escape"),
    ],
)
def test_unknown_command_reply_is_printable_ascii_not_an_echo_of_control_bytes(
    server: RunningServer, verb: bytes
) -> None:
    with raw_client(server) as client:
        client.send(verb + b"\r\n")
        reply = client.reply()
        assert reply.startswith(b"500 "), f"expected a 500 reply to {verb!r}, got {reply!r}"
        line = reply.removesuffix(b"\r\n")
        assert RFC5321_REPLY_LINE.fullmatch(line), (
            f"reply to {verb!r} is not RFC 5321 reply text (HT or octets 32-126 only); "
            f"it echoes the client's control bytes back: {reply!r}"
        )
        client.command(b"NOOP\r\n", NOOP_OK, "NOOP after a control-byte command")
        client.quit()
    assert_event_count(server, 0, "control-byte commands")
    assert_still_serves(server, 0)


def test_fifth_unknown_command_gets_502_and_closes_but_server_serves_others(
    server: RunningServer,
) -> None:
    with raw_client(server) as client:
        for number in range(1, UNKNOWN_COMMAND_BUDGET):
            verb = f"BOGUS{number}".encode()
            client.command(verb + b"\r\n", unknown(verb), f"unknown command #{number}")
        client.send(b"BOGUS5\r\n")
        rest = client.rest_until_closed()
        assert rest == TOO_MANY_UNKNOWN, (
            f"unknown command #{UNKNOWN_COMMAND_BUDGET}: expected {TOO_MANY_UNKNOWN!r} "
            f"and a close, got {rest!r}"
        )
    wait_until(lambda: server.connection_count() == 0, "the 502 connection to be forgotten")
    assert_event_count(server, 0, "unknown commands")
    assert_still_serves(server, 0)


# --- bare LF -------------------------------------------------------------------------------


def test_bare_lf_terminated_commands_get_the_same_replies_as_crlf_commands(
    raw_server: RunningServer,
) -> None:
    server = raw_server
    with raw_client(server) as client:
        client.ehlo(b"EHLO client.example\n")
        client.ehlo(b"EHLO client.example\r\n")
        client.command(b"NOOP\n", NOOP_OK, "NOOP ended by bare LF")
        client.command(b"MAIL FROM:<a@example.com>\n", SENDER_OK, "MAIL ended by bare LF")
        client.command(b"RCPT TO:<b@example.com>\n", RECIPIENT_OK, "RCPT ended by bare LF")
        client.command(b"DATA\n", GO_AHEAD, "DATA ended by bare LF")
        client.send(b"Subject: lf commands\r\n\r\nbody\r\n.\r\n")
        event_id = client.queued("end of DATA after bare-LF commands")
        client.send(b"QUIT\n")
        rest = client.rest_until_closed()
        assert rest == BYE, f"QUIT ended by bare LF: expected {BYE!r} then close, got {rest!r}"
    (event,) = server.delivery.wait_for(1)
    assert event["id"] == event_id, "the event is not the one the 250 reply named"
    assert event["envelope"]["helo"] == "client.example", "bare LF leaked into the HELO name"
    assert event["envelope"]["from"] == "a@example.com", "bare LF leaked into MAIL FROM"
    assert event["envelope"]["to"] == ["b@example.com"], "bare LF leaked into RCPT TO"
    assert raw_of(event) == b"Subject: lf commands\r\n\r\nbody\r\n"
    assert_still_serves(server, 1)


def test_bare_lf_dot_bare_lf_does_not_end_data(raw_server: RunningServer) -> None:
    server = raw_server
    with raw_client(server) as client:
        client.start_data()
        client.send(b"Subject: lf\n\nhello\n.\n")
        client.assert_silent("<LF>.<LF> must not end DATA (only <CRLF>.<CRLF> does)")
        client.send(b"\r\n.\r\n")
        event_id = client.queued("end of DATA by <CRLF>.<CRLF>")
        client.quit()
    (event,) = server.delivery.wait_for(1)
    assert event["id"] == event_id
    assert raw_of(event) == b"Subject: lf\n\nhello\n.\n\r\n", "DATA bytes were not kept as sent"
    assert event["message"]["subject"] == "lf"
    assert event["message"]["body"] == "hello\n.\n\n"
    assert_still_serves(server, 1)


# --- long lines ----------------------------------------------------------------------------


def test_command_line_of_512_octets_is_not_too_long(server: RunningServer) -> None:
    line = b"NOOP " + b"a" * 505 + b"\r\n"
    assert len(line) == 512, "RFC 5321 4.5.3.1.4: 512 octets including CRLF"
    with raw_client(server) as client:
        client.ehlo()
        client.command(line, NOOP_OK, "a 512-octet command line")
        client.quit()


@pytest.mark.parametrize(
    "length",
    [
        pytest.param(600, id="over-512"),
        pytest.param(5000, id="over-the-stream-buffer"),
    ],
)
def test_command_line_over_512_octets_gets_500_once_and_session_continues(
    server: RunningServer, length: int
) -> None:
    line = b"NOOP " + b"a" * (length - 7) + b"\r\n"
    assert len(line) == length
    with raw_client(server) as client:
        client.ehlo()
        client.send(line + b"NOOP\r\n")
        client.expect(COMMAND_TOO_LONG, f"a {length}-octet command line")
        client.expect(NOOP_OK, "the command after the long line (no reply for its tail)")
        client.quit()
    assert_event_count(server, 0, "long command lines")
    assert_still_serves(server, 0)


def test_data_line_of_1000_octets_is_accepted(raw_server: RunningServer) -> None:
    server = raw_server
    line = b"a" * 998 + b"\r\n"
    content = b"Subject: long line\r\n\r\n" + line
    with raw_client(server) as client:
        client.start_data()
        client.send(content + b".\r\n")
        client.queued("DATA with a 1000-octet line")
        client.quit()
    (event,) = server.delivery.wait_for(1)
    assert raw_of(event) == content, "the 1000-octet line was not kept intact"


@pytest.mark.parametrize(
    "length",
    [
        pytest.param(1002, id="just-over-1000"),
        pytest.param(5000, id="over-the-stream-buffer"),
    ],
)
def test_data_line_over_1000_octets_gets_500_5_5_2_no_event_and_next_transaction_works(
    raw_server: RunningServer, length: int
) -> None:
    server = raw_server
    long_line = b"x" * (length - 2) + b"\r\n"
    with raw_client(server) as client:
        client.start_data()
        client.send(b"Subject: too long\r\n\r\n" + long_line + b"after\r\n.\r\n")
        client.expect(DATA_LINE_TOO_LONG, f"DATA with a {length}-octet line")
        assert_event_count(server, 0, "rejected long-line DATA")
        client.command(RCPT_TO, NEED_MAIL, "RCPT after the rejected DATA (envelope must reset)")
        client.command(MAIL_FROM, SENDER_OK, "MAIL of the next transaction")
        client.command(RCPT_TO, RECIPIENT_OK, "RCPT of the next transaction")
        client.command(b"DATA\r\n", GO_AHEAD, "DATA of the next transaction")
        client.send(b"Subject: next\r\n\r\nshort\r\n.\r\n")
        event_id = client.queued("the next transaction")
        client.quit()
    (event,) = server.delivery.wait_for(1)
    assert event["id"] == event_id
    assert raw_of(event) == b"Subject: next\r\n\r\nshort\r\n", "the next message is not intact"
    assert_still_serves(server, 1)


def test_stalled_half_sent_long_data_line_does_not_block_other_clients(
    server: RunningServer,
) -> None:
    with raw_client(server) as client:
        client.start_data()
        client.send(b"Subject: stalled\r\n\r\n" + b"y" * 3000)
        assert_still_serves(server, 0)
        client.send(b"\r\n.\r\n")
        client.expect(DATA_LINE_TOO_LONG, "the stalled line once finished")
        client.quit()
    assert_event_count(server, 1, "only the other client's message")


# --- NUL bytes -----------------------------------------------------------------------------


def test_nul_in_data_body_is_delivered_as_u0000_in_one_valid_event(
    raw_server: RunningServer,
) -> None:
    server = raw_server
    content = b"Subject: nul\r\n\r\nbefore\x00after\r\n"
    with raw_client(server) as client:
        client.start_data()
        client.send(content + b".\r\n")
        event_id = client.queued("DATA containing NUL")
        client.quit()
    (event,) = server.delivery.wait_for(1)
    assert event["id"] == event_id
    assert event["message"]["body"] == "before\x00after\n", "NUL was not kept as U+0000"
    assert raw_of(event) == content
    assert_still_serves(server, 1)


BAD_HELO = b"501 5.5.4 Invalid domain name: control characters are not allowed\r\n"
BAD_ADDRESS = b"553 5.1.3 Invalid address: control characters are not allowed\r\n"


def test_nul_in_command_arguments_is_refused_and_the_session_continues(
    server: RunningServer,
) -> None:
    with raw_client(server) as client:
        client.command(b"EHLO a\x00b\r\n", BAD_HELO, "EHLO with NUL")
        client.command(b"HELO a\x00b\r\n", BAD_HELO, "HELO with NUL")
        client.ehlo()
        client.command(b"MAIL FROM:<a\x00b@example.com>\r\n", BAD_ADDRESS, "MAIL with NUL")
        client.command(MAIL_FROM, SENDER_OK, "MAIL")
        client.command(b"RCPT TO:<c\x00d@example.com>\r\n", BAD_ADDRESS, "RCPT with NUL")
        client.command(RCPT_TO, RECIPIENT_OK, "RCPT")
        client.command(b"DATA\r\n", GO_AHEAD, "DATA")
        client.send(b"Subject: nul args\r\n\r\nbody\r\n.\r\n")
        event_id = client.queued("DATA after refused NUL arguments")
        client.quit()
    (event,) = server.delivery.wait_for(1)
    assert event["id"] == event_id
    assert "\x00" not in json.dumps(event["envelope"]), "a refused argument reached the envelope"
    assert_still_serves(server, 1)


def test_bare_cr_in_ehlo_argument_cannot_inject_a_header_into_the_event(
    server: RunningServer,
) -> None:
    with raw_client(server) as client:
        client.send(b"EHLO x\rX-Injected: yes\r\n")
        reply = client.reply()
        code = reply[:3]
        assert code in (b"250", b"501"), f"EHLO with a bare CR: expected 250 or 501, got {reply!r}"
        if code == b"501":
            client.ehlo()
        client.command(MAIL_FROM, SENDER_OK, "MAIL")
        client.command(RCPT_TO, RECIPIENT_OK, "RCPT")
        client.command(b"DATA\r\n", GO_AHEAD, "DATA")
        client.send(b"Subject: cr\r\n\r\nbody\r\n.\r\n")
        client.queued("DATA after EHLO with a bare CR")
        client.quit()
    (event,) = server.delivery.wait_for(1)
    headers = event["message"]["headers"]
    assert set(headers) == {"Received", "Subject"}, (
        f"the HELO argument's bare CR split the Received header into new headers: {headers}"
    )
    assert len(headers["Received"]) == 1
    assert "by localhost (mailrunner) with ESMTP id" in headers["Received"][0], (
        f"the Received header was cut short: {headers['Received'][0]!r}"
    )


# --- SMTP smuggling ------------------------------------------------------------------------

SMUGGLED = b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@x>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n"
SMUGGLED_BODY = "MAIL FROM:<evil@x>\nRCPT TO:<victim@x>\nDATA\nSubject: smuggled\n\nevil\n"


@pytest.mark.parametrize(
    ("sequence", "kept", "body"),
    [
        pytest.param(b"\n.\n", b"\n.\n", "before\n.\n" + SMUGGLED_BODY, id="LF.LF"),
        pytest.param(b"\r.\r", b"\r.\r", "before\n.\n" + SMUGGLED_BODY, id="CR.CR"),
        pytest.param(b"\n.\r\n", b"\n.\r\n", "before\n.\n" + SMUGGLED_BODY, id="LF.CRLF"),
        # The line `.<CR>MAIL FROM:...` starts with a dot followed by more text: RFC 5321
        # 4.5.2 removes that one dot, and the rest stays message text.
        pytest.param(b"\r\n.\r", b"\r\n\r", "before\n\n" + SMUGGLED_BODY, id="CRLF.CR"),
    ],
)
def test_smuggling_sequence_inside_data_yields_one_message_with_the_smuggled_text_as_body(
    raw_server: RunningServer, sequence: bytes, kept: bytes, body: str
) -> None:
    server = raw_server
    head = b"Subject: s\r\n\r\nbefore"
    with raw_client(server) as client:
        client.start_data()
        client.send(head + sequence + SMUGGLED + b".\r\nQUIT\r\n")
        event_id = client.queued(f"DATA with smuggling sequence {sequence!r}")
        rest = client.rest_until_closed()
        assert rest == BYE, (
            f"after the one 250 only the 221 to QUIT may follow; the server answered "
            f"smuggled commands: {rest!r}"
        )
    events = server.delivery.wait_for(1)
    assert len(events) == 1, f"smuggled MAIL FROM produced {len(events) - 1} extra message(s)"
    (event,) = events
    assert event["id"] == event_id
    assert event["envelope"]["from"] == "a@example.com", "the envelope sender was replaced"
    assert event["envelope"]["to"] == ["b@example.com"], "the envelope recipients were changed"
    assert event["message"]["subject"] == "s"
    assert raw_of(event) == head + kept + SMUGGLED, "the DATA bytes were not kept as message text"
    assert event["message"]["body"] == body, "the smuggled commands are not in the body"
    assert_still_serves(server, 1)


# --- disconnects ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "partial",
    [
        pytest.param(b"Subject: cut\r\n\r\nhalf a li", id="mid-line"),
        pytest.param(b"Subject: cut\r\n\r\nwhole line\r\n", id="after-crlf"),
        pytest.param(b"Subject: cut\r\n\r\nbody\r\n.", id="after-crlf-dot"),
        pytest.param(b"Subject: cut\r\n\r\nbody\r\n.\r", id="after-crlf-dot-cr"),
    ],
)
def test_client_disconnecting_mid_data_produces_no_event(
    server: RunningServer, partial: bytes
) -> None:
    with raw_client(server) as client:
        client.start_data()
        client.send(partial)
        client.sock.shutdown(socket.SHUT_WR)
        rest = client.rest_until_closed()
        assert rest == b"", f"a half-sent message must get no reply, got {rest!r}"
    wait_until(lambda: server.connection_count() == 0, "the cut connection to be forgotten")
    assert_event_count(server, 0, "a message cut off mid-DATA")
    assert_still_serves(server, 0)


def test_client_resetting_mid_data_produces_no_event(server: RunningServer) -> None:
    with raw_client(server) as client:
        client.start_data()
        client.send(b"Subject: reset\r\n\r\nbody\r\n")
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    wait_until(lambda: server.connection_count() == 0, "the reset connection to be forgotten")
    assert_event_count(server, 0, "a message reset mid-DATA")
    assert_still_serves(server, 0)
