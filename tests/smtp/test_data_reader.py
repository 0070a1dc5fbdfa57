"""DATA as the chunked reader takes it over real sockets: exact bytes, pipelining, timeouts,
and the in-flight memory budget shared by all sessions."""

from __future__ import annotations

import base64
import smtplib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from support.raw_smtp import ENVELOPE, SOCKET_TIMEOUT, RawSmtp, raw_smtp
from support.server import RunningServer

MIB = 1024 * 1024
NO_STORAGE = b"452 4.3.1 Insufficient system storage\r\n"
TOO_BIG = b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
GO_AHEAD = b"354 End data with <CR><LF>.<CR><LF>\r\n"
IN_MEMORY = {"spool_bytes": 2 * MIB}
"""For the budget's tests: messages up to the budget stay in memory, none goes to the spool."""


@contextmanager
def session(server: RunningServer) -> Iterator[RawSmtp]:
    with raw_smtp(server.port, server.host) as client:
        yield client


def raw_of(event: dict[str, Any]) -> bytes:
    return base64.b64decode(event["message"]["raw"])


def send_message(server: RunningServer, content: bytes) -> None:
    with smtplib.SMTP(server.host, server.port, timeout=SOCKET_TIMEOUT) as client:
        assert client.sendmail("a@example.com", ["b@example.com"], content) == {}


def filler(size: int, line: bytes = b"f" * 78 + b"\r\n") -> bytes:
    return b"Subject: filler\r\n\r\n" + line * (size // len(line))


@pytest.fixture
def raw_server(start_server: Callable[..., RunningServer]) -> RunningServer:
    return start_server(smtp={"include_raw": True, "max_message_size": 0})


def test_commands_pipelined_after_the_final_dot_are_read_as_commands(
    raw_server: RunningServer,
) -> None:
    """Everything in one write: the reader must give back what follows the final dot."""
    first = b"Subject: one\r\n\r\n..dotted\r\n"
    second = b"Subject: two\r\n\r\nsecond\r\n"
    with session(raw_server) as client:
        client.send(
            ENVELOPE
            + b"DATA\r\n"
            + first
            + b".\r\nMAIL FROM:<c@example.com>\r\nRCPT TO:<d@example.com>\r\nDATA\r\n"
            + second
            + b".\r\nQUIT\r\n"
        )
        codes = [client.code() for _ in range(8)]
        assert codes == [b"250", b"250", b"250", b"354", b"250", b"250", b"250", b"354"]
        assert client.reply().startswith(b"250 2.0.0 OK: queued as ")
        assert client.reply() == b"221 2.0.0 Bye\r\n"
        assert client.closed()
    one, two = raw_server.delivery.wait_for(2)
    assert (raw_of(one), raw_of(two)) == (b"Subject: one\r\n\r\n.dotted\r\n", second)
    assert two["envelope"]["from"] == "c@example.com"


def test_an_empty_message_right_after_data_is_accepted(raw_server: RunningServer) -> None:
    with session(raw_server) as client:
        client.start_data()
        client.send(b".\r\n")
        assert client.reply().startswith(b"250 2.0.0 OK: queued as ")
    (event,) = raw_server.delivery.wait_for(1)
    assert event["envelope"]["size"] == 0


def test_a_multi_megabyte_message_arrives_byte_for_byte(raw_server: RunningServer) -> None:
    """Lines of every length up to 1000, dots, CR and LF alone, NUL and 8-bit octets: read
    in many chunks, the message is exactly what the client meant (dots unstuffed)."""
    lines = [bytes([46 + index % 200]) * (index % 999) for index in range(6000)]
    lines += [b".", b"..", b".\r.", b"\n.\n", b"\x00\xff\xfe", b"\r"]
    content = b"Subject: big\r\n\r\n" + b"\r\n".join(lines) + b"\r\n"
    stuffed = content.replace(b"\r\n.", b"\r\n..")
    assert len(stuffed) > 2 * MIB
    with session(raw_server) as client:
        client.start_data()
        client.send(stuffed + b".\r\n")
        assert client.reply().startswith(b"250 2.0.0 OK: queued as ")
    (event,) = raw_server.delivery.wait_for(1)
    assert raw_of(event) == content


def test_a_client_silent_inside_data_gets_421_after_the_read_timeout(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(smtp={"read_timeout": 0.5})
    with session(server) as client:
        client.start_data()
        client.send(b"Subject: stalled\r\n\r\nhalf")
        started = time.monotonic()
        assert client.closed()
        waited = time.monotonic() - started
    assert client.buffer == b"421 4.4.2 localhost Error: timeout exceeded, closing connection\r\n"
    assert 0.4 < waited < 5, f"the read timeout fired after {waited:.2f}s, expected about 0.5s"
    assert server.delivery.events == []


def test_a_message_beyond_the_whole_budget_gets_552_and_the_budget_comes_back(
    start_server: Callable[..., RunningServer],
) -> None:
    """No retry could ever fit it: a 452 would have the client try again for days."""
    server = start_server(smtp={"max_inflight_bytes": MIB, "max_message_size": 0})
    with session(server) as client:
        client.start_data()
        client.send(filler(MIB + 4096) + b".\r\n")
        assert client.reply() == TOO_BIG
        client.send(b"RCPT TO:<b@example.com>\r\n")
        assert client.code() == b"503", "the refused transaction must be reset"
    # both the refusal and the hand-off give the budget back: these fit one after the other
    for _ in range(3):
        send_message(server, filler(MIB - 64 * 1024))
    assert len(server.delivery.wait_for(3)) == 3


def test_mail_declaring_a_size_beyond_the_whole_budget_gets_552_at_mail(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(smtp={"max_inflight_bytes": 2 * MIB, "max_message_size": 0})
    with smtplib.SMTP(server.host, server.port, timeout=SOCKET_TIMEOUT) as client:
        client.ehlo("c")
        reply = client.docmd(f"MAIL FROM:<a@example.com> SIZE={2 * MIB + 1}")
        assert reply == (552, b"5.3.4 Message size exceeds fixed maximum message size")
        assert client.docmd(f"MAIL FROM:<a@example.com> SIZE={2 * MIB}")[0] == 250
        assert client.docmd("RCPT TO:<b@example.com>")[0] == 250


def hold_most_of_the_budget(holder: RawSmtp, other: RawSmtp) -> None:
    """`holder` sends 1.5 MiB of DATA and keeps it open; returns once it counts against the
    2 MiB budget (a SIZE of half a MiB is refused to `other`)."""
    holder.start_data()
    holder.send(filler(MIB + MIB // 2 + 4096))
    other.send(ENVELOPE)
    assert [other.code() for _ in range(3)] == [b"250"] * 3
    other.send(b"RSET\r\n")
    assert other.code() == b"250"
    deadline = time.monotonic() + SOCKET_TIMEOUT
    while True:
        other.send(f"MAIL FROM:<a@example.com> SIZE={MIB // 2}\r\nRSET\r\n".encode())
        code = other.code()
        assert other.code() == b"250"
        if code == b"452":
            return
        assert time.monotonic() < deadline, "the held DATA never counted against the budget"


def test_the_budget_is_shared_by_all_sessions(start_server: Callable[..., RunningServer]) -> None:
    """One session holding most of it leaves the rest for the others, and only that: a SIZE
    above what it leaves is refused at MAIL, a message above it at the final dot."""
    server = start_server(smtp={"max_inflight_bytes": 2 * MIB, **IN_MEMORY, "max_message_size": 0})
    with session(server) as holder, session(server) as other:
        hold_most_of_the_budget(holder, other)
        other.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        assert [other.code() for _ in range(3)] == [b"250", b"250", b"354"]
        other.send(filler(MIB) + b".\r\n")
        assert other.reply() == NO_STORAGE
        holder.send(b".\r\n")
        assert holder.reply().startswith(b"250 2.0.0 OK: queued as ")
    (event,) = server.delivery.wait_for(1)
    assert event["message"]["subject"] == "filler"


@pytest.mark.parametrize(
    ("size_limit", "tail", "reply"),
    [
        pytest.param(
            MIB + 3 * MIB // 4, (b"t" * 78 + b"\r\n") * (MIB // 80), b"552 5.3.4 ", id="too-big"
        ),
        pytest.param(0, b"l" * 2000 + b"\r\n", b"500 5.5.2 ", id="line-too-long"),
    ],
)
def test_a_message_that_would_fail_anyway_gets_its_permanent_reply_not_452(
    start_server: Callable[..., RunningServer], size_limit: int, tail: bytes, reply: bytes
) -> None:
    """Over the budget left first, then too big or with a long line: a 452 would only make
    the client retry a message that can never pass."""
    server = start_server(
        smtp={"max_inflight_bytes": 2 * MIB, **IN_MEMORY, "max_message_size": size_limit}
    )
    with session(server) as holder, session(server) as client:
        hold_most_of_the_budget(holder, client)
        client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        assert [client.code() for _ in range(3)] == [b"250", b"250", b"354"]
        client.send(filler(MIB) + tail + filler(MIB // 4) + b".\r\n")
        assert client.reply().startswith(reply)
