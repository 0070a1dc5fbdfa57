"""CHUNKING (RFC 3030) as a client meets it over a raw socket: BDAT's chunks make the same
event as the same message sent with DATA, every refusal reads the chunk it refuses so the
next command still parses, and what a transaction holds (budget, spool file) goes with it."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import re
import smtplib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from mailrunner.smtp.protocol import MailrunnerSMTP
from support.faults import REFUSAL, add_fault
from support.memory_smtp import session
from support.raw_smtp import ENVELOPE, RawSmtp, raw_smtp
from support.server import LOOPS, RunningServer, on_loop
from support.waiting import WAIT_SECONDS, wait_until

Start = Callable[..., RunningServer]

MIB = 1024 * 1024
HELO = "client.example"
MESSAGE = (
    "From: Ünïcode <a@example.com>\r\n"
    "To: b@example.com\r\n"
    "Subject: =?utf-8?q?chunked_=C3=A9?=\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    ".a line that DATA dot-stuffs\r\n"
    "..two dots\r\n"
    ".\r\n"
    "héllo wörld\r\n"
).encode()
"""Lines that start with a dot (DATA stuffs them, BDAT sends them as they are), 8-bit text."""
TOO_BIG = b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
NO_RECIPIENTS = b"554 5.5.1 No valid recipients\r\n"
BDAT_SYNTAX = b"501 5.5.4 Syntax: BDAT <size> [LAST]\r\n"
TIMEOUT = b"421 4.4.2 localhost Error: timeout exceeded, closing connection\r\n"


def bdat(chunk: bytes, *, last: bool = False) -> bytes:
    """One BDAT command with its chunk, as a client writes them."""
    return b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"") + chunk


def received(size: int) -> bytes:
    return b"250 2.0.0 %d octets received\r\n" % size


def cut(stream: bytes, offsets: list[int]) -> list[bytes]:
    """`stream` cut at `offsets` (each taken modulo its length + 1); never an empty list."""
    bounds = [0, *sorted({offset % (len(stream) + 1) for offset in offsets}), len(stream)]
    return [stream[start:end] for start, end in itertools.pairwise(bounds)]


def split(message: bytes, *cuts: int) -> list[bytes]:
    bounds = [0, *cuts, len(message)]
    return [message[start:stop] for start, stop in itertools.pairwise(bounds)]


def send_with_bdat(server: RunningServer, chunks: list[bytes]) -> list[bytes]:
    """The whole transaction pipelined in one write (RFC 3030 allows it): every reply."""
    with raw_smtp(server.port) as client:
        client.send(
            ENVELOPE.replace(b"client.example", HELO.encode())
            + b"".join(bdat(chunk) for chunk in chunks[:-1])
            + bdat(chunks[-1], last=True)
            + b"QUIT\r\n"
        )
        return [client.reply() for _ in range(3 + len(chunks) + 1)]


def send_with_data(server: RunningServer, message: bytes) -> None:
    with smtplib.SMTP(server.host, server.port, timeout=WAIT_SECONDS) as client:
        client.ehlo(HELO)
        assert client.sendmail("a@example.com", ["b@example.com"], message) == {}


def comparable(event: dict[str, Any]) -> str:
    """The event's JSON with what differs between any two deliveries of one message (its ids,
    its time, the client's port) put in fixed words, every other byte kept."""
    text = json.dumps(event, sort_keys=True, ensure_ascii=False)
    host, _, _port = event["remote_addr"].rpartition(":")
    text = text.replace(event["id"], "<id>").replace(event["uuid"], "<uuid>")
    text = text.replace(json.dumps(event["remote_addr"]), json.dumps(f"{host}:<port>"))
    text = text.replace(event["received_at"], "<received_at>")
    # the trace header's date, to the second
    return re.sub(r";\\t[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} [\d:]{8} \+0000", ";<date>", text)


def raw_of(event: dict[str, Any]) -> bytes:
    return base64.b64decode(event["message"]["raw"])


def spool_files(server: RunningServer) -> list[Path]:
    return sorted((Path(server.config.data_dir) / "spool" / str(os.getpid())).iterdir())


@pytest.mark.parametrize("kind", LOOPS)
def test_a_message_in_three_chunks_is_the_same_event_as_with_data(
    start_server: Start, kind: str
) -> None:
    server = start_server(server=on_loop(kind), smtp={"include_raw": True})
    send_with_data(server, MESSAGE)
    # cuts inside a CRLF and inside a two-octet UTF-8 character
    cut_crlf = MESSAGE.index(b"\r\n") + 1
    cut_char = MESSAGE.index("ö".encode()) + 1
    replies = send_with_bdat(server, split(MESSAGE, cut_crlf, cut_char))
    assert replies[3:5] == [received(cut_crlf), received(cut_char - cut_crlf)]
    assert replies[5].startswith(b"250 2.0.0 OK: queued as ")
    by_data, by_bdat = server.delivery.wait_for(2)
    assert raw_of(by_bdat) == MESSAGE
    assert comparable(by_bdat) == comparable(by_data)


def test_chunking_is_offered_and_binarymime_is_not(server: RunningServer) -> None:
    with smtplib.SMTP(server.host, server.port, timeout=WAIT_SECONDS) as client:
        client.ehlo(HELO)
        assert client.has_extn("chunking")
        assert not client.has_extn("binarymime")


def test_chunks_sent_one_at_a_time_are_answered_one_at_a_time(start_server: Start) -> None:
    server = start_server(smtp={"include_raw": True})
    chunks = split(MESSAGE, 40, 41, 100)
    with raw_smtp(server.port) as client:
        client.send(ENVELOPE)
        assert client.codes(3) == [b"250"] * 3
        for chunk in chunks[:-1]:
            client.send(bdat(chunk))
            assert client.reply() == received(len(chunk))
        client.send(bdat(chunks[-1], last=True))
        assert client.code() == b"250"
        client.send(ENVELOPE[len(b"EHLO client.example\r\n") :] + b"DATA\r\n")
        assert client.codes(3) == [b"250", b"250", b"354"], "DATA works in the next transaction"
        client.send(b"Subject: next\r\n\r\nby DATA\r\n.\r\n")
        assert client.code() == b"250"
    first, second = server.delivery.wait_for(2)
    assert raw_of(first) == MESSAGE
    assert second["message"]["subject"] == "next"


def test_bdat_0_last_ends_the_message_and_may_be_all_of_it(start_server: Start) -> None:
    server = start_server(smtp={"include_raw": True})
    replies = send_with_bdat(server, [MESSAGE, b""])
    assert replies[3] == received(len(MESSAGE))
    assert replies[4].startswith(b"250 2.0.0 OK: queued as ")
    replies = send_with_bdat(server, [b""])
    assert replies[3].startswith(b"250 2.0.0 OK: queued as "), "an empty message"
    whole, empty = server.delivery.wait_for(2)
    assert raw_of(whole) == MESSAGE
    assert empty["envelope"]["size"] == 0
    assert raw_of(empty) == b""


def test_a_chunk_has_no_line_length_rule(start_server: Start) -> None:
    """DATA refuses a line over 1000 octets (500); BDAT's octets are not lines."""
    server = start_server(smtp={"include_raw": True})
    message = b"Subject: long\r\n\r\n" + b"x" * 5000 + b"\r\n"
    replies = send_with_bdat(server, [message])
    assert replies[3].startswith(b"250 2.0.0 OK")
    (event,) = server.delivery.wait_for(1)
    assert raw_of(event) == message


def test_data_after_bdat_in_one_transaction_gets_503_and_resets_it(server: RunningServer) -> None:
    with raw_smtp(server.port) as client:
        client.send(ENVELOPE + bdat(b"Subject: x\r\n") + b"DATA\r\n")
        assert client.codes(4) == [b"250", b"250", b"250", b"250"]
        assert client.reply() == (
            b"503 5.5.1 DATA after BDAT in one transaction: the transaction is reset\r\n"
        )
        client.send(bdat(b"\r\nbody\r\n", last=True))
        assert client.reply() == NO_RECIPIENTS, "the transaction was reset"
        client.send(ENVELOPE[len(b"EHLO client.example\r\n") :] + bdat(MESSAGE, last=True))
        assert client.codes(3) == [b"250"] * 3
    (event,) = server.delivery.wait_for(1)
    assert event["envelope"]["size"] == len(MESSAGE)


def test_auth_between_chunks_gets_503_and_the_message_is_not_authenticated(
    server: RunningServer,
) -> None:
    """RFC 4954 4: no AUTH within a mail transaction, so an envelope accepted from an
    anonymous client never becomes an authenticated one's; the chunks go on."""
    credentials = base64.b64encode(b"\0mallory\0pw").decode()
    with raw_smtp(server.port) as client:
        client.send(ENVELOPE + bdat(MESSAGE[:10]) + f"AUTH PLAIN {credentials}\r\n".encode())
        assert client.codes(4) == [b"250"] * 4
        assert client.reply() == b"503 5.5.1 AUTH not permitted during a mail transaction\r\n"
        client.send(bdat(MESSAGE[10:], last=True) + f"AUTH PLAIN {credentials}\r\n".encode())
        assert client.codes(2) == [b"250", b"235"], "AUTH once the transaction is over"
    (event,) = server.delivery.wait_for(1)
    assert event["envelope"]["size"] == len(MESSAGE)
    assert "mallory" not in json.dumps(event)
    assert "with ESMTP id" in event["message"]["headers"]["Received"][0]


def test_bdat_without_recipient_discards_the_chunk_and_gets_554(server: RunningServer) -> None:
    """The chunk's octets look like commands: were they parsed, QUIT would close."""
    with raw_smtp(server.port) as client:
        client.send(b"EHLO client.example\r\nMAIL FROM:<a@example.com>\r\n")
        assert client.codes(2) == [b"250", b"250"]
        client.send(bdat(b"QUIT\r\n", last=True) + b"NOOP\r\n")
        assert client.reply() == NO_RECIPIENTS
        assert client.code() == b"250", "NOOP after the discarded chunk"
        client.send(b"RCPT TO:<b@example.com>\r\n" + bdat(MESSAGE, last=True))
        assert client.codes(2) == [b"250", b"250"], "the transaction still takes a recipient"
    assert len(server.delivery.wait_for(1)) == 1


def test_bdat_before_helo_discards_the_chunk_and_gets_503(server: RunningServer) -> None:
    with raw_smtp(server.port) as client:
        client.send(bdat(b"QUIT\r\n") + b"NOOP\r\n")
        assert client.reply() == b"503 Error: send HELO first\r\n"
        assert client.code() == b"250"


def test_a_chunk_past_max_message_size_is_read_then_552_and_the_transaction_reset(
    start_server: Start,
) -> None:
    server = start_server(smtp={"max_message_size": 1000})
    commands = b"QUIT\r\n" * 100  # 600 octets that would end the session if parsed
    with raw_smtp(server.port) as client:
        client.send(ENVELOPE + bdat(commands) + bdat(commands, last=True) + b"NOOP\r\n")
        assert client.codes(3) == [b"250"] * 3
        assert client.reply() == received(600)
        assert client.reply() == TOO_BIG
        assert client.code() == b"250", "NOOP: the refused chunk was read, not parsed"
        client.send(b"RCPT TO:<b@example.com>\r\n")
        assert client.code() == b"503", "the refused transaction must be reset"
        client.send(ENVELOPE[len(b"EHLO client.example\r\n") :] + bdat(MESSAGE, last=True))
        assert client.codes(3) == [b"250"] * 3
    (event,) = server.delivery.wait_for(1)
    assert event["envelope"]["size"] == len(MESSAGE)


@pytest.mark.parametrize("argument", [b"", b" ten", b" 10 FIRST", b" -1", b" 1e3", b" 10 LAST x"])
def test_a_size_that_is_no_number_gets_501(server: RunningServer, argument: bytes) -> None:
    with raw_smtp(server.port) as client:
        client.send(ENVELOPE + b"BDAT" + argument + b"\r\nNOOP\r\n")
        assert client.codes(3) == [b"250"] * 3
        assert client.reply() == BDAT_SYNTAX
        assert client.code() == b"250"


def test_a_chunk_shorter_than_announced_ends_in_the_read_timeout(start_server: Start) -> None:
    server = start_server(smtp={"read_timeout": 0.5})
    with raw_smtp(server.port) as client:
        client.send(ENVELOPE)
        assert client.codes(3) == [b"250"] * 3
        started = time.monotonic()
        client.send(b"BDAT 100 LAST\r\n" + b"x" * 60)
        assert client.closed()
        waited = time.monotonic() - started
    assert client.buffer == TIMEOUT
    assert 0.4 < waited < 5, f"the read timeout fired after {waited:.2f}s, expected about 0.5s"
    assert server.delivery.events == []


def test_rset_gives_back_the_budget_a_transaction_held(start_server: Start) -> None:
    """The budget is 1 MiB: a second 700 KiB message only fits once RSET gave it back."""
    server = start_server(
        smtp={"max_inflight_bytes": MIB, "spool_bytes": 2 * MIB, "max_message_size": 0}
    )
    chunk = b"Subject: big\r\n\r\n" + b"y" * 700 * 1024
    with raw_smtp(server.port) as client:
        client.send(ENVELOPE + bdat(chunk))
        assert client.codes(4) == [b"250", b"250", b"250", b"250"]
        with raw_smtp(server.port) as other:
            other.send(ENVELOPE + bdat(chunk))
            assert other.codes(3) == [b"250"] * 3
            assert other.reply() == b"452 4.3.1 Insufficient system storage\r\n"
            client.send(b"RSET\r\n")
            assert client.code() == b"250"
            other.send(ENVELOPE[len(b"EHLO client.example\r\n") :] + bdat(chunk, last=True))
            assert other.codes(3) == [b"250"] * 3
    (event,) = server.delivery.wait_for(1)
    assert event["envelope"]["size"] == len(chunk)


def test_fault_rules_at_data_answer_bdat_last(start_server: Start) -> None:
    server = start_server(smtp={"faults_api": True})
    add_fault(server, stage="data", action="reply", reply=REFUSAL)
    replies = send_with_bdat(server, split(MESSAGE, 10))
    assert replies[3] == received(10)
    assert replies[4] == REFUSAL.encode() + b"\r\n"
    assert server.delivery.events == []


@pytest.mark.parametrize("kind", LOOPS)
def test_a_spooled_bdat_message_is_delivered_byte_identical_and_its_file_goes(
    start_server: Start, kind: str
) -> None:
    server = start_server(
        server=on_loop(kind),
        smtp={"spool_bytes": 64 * 1024, "include_raw": True, "faults_api": True},
    )
    add_fault(server, stage="data", action="delay", delay=1)
    body = base64.encodebytes(os.urandom(450 * 1024)).replace(b"\n", b"\r\n")
    message = b"From: a@example.com\r\nSubject: spooled\r\n\r\n" + body
    chunks = split(message, 200 * 1024, 400 * 1024)
    with raw_smtp(server.port) as client:
        client.send(ENVELOPE + bdat(chunks[0]) + bdat(chunks[1]))
        assert client.codes(5) == [b"250"] * 5
        wait_until(lambda: bool(spool_files(server)), "the chunks to reach the spool")
        client.send(bdat(chunks[2], last=True))
        wait_until(
            lambda: [f.stat().st_size for f in spool_files(server)] == [len(message)],
            "the whole message in its spool file while the delay holds it",
        )
        assert client.code() == b"250"
    (event,) = server.delivery.wait_for(1)
    assert raw_of(event) == message
    assert event["envelope"]["size"] == len(message)
    assert spool_files(server) == [], "the spool file outlived its 250"


def test_rset_and_a_lost_connection_remove_a_bdat_spool_file(start_server: Start) -> None:
    server = start_server(smtp={"spool_bytes": 64 * 1024})
    chunk = b"Subject: spooled\r\n\r\n" + b"z" * 300 * 1024
    with raw_smtp(server.port) as client:
        client.send(ENVELOPE + bdat(chunk))
        assert client.codes(4) == [b"250"] * 4
        assert spool_files(server), "the chunk went to the spool"
        client.send(b"RSET\r\n")
        assert client.code() == b"250"
        wait_until(lambda: not spool_files(server), "RSET to remove the spool file")
        client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n" + bdat(chunk))
        assert client.codes(3) == [b"250"] * 3
        assert spool_files(server)
    wait_until(lambda: not spool_files(server), "the lost connection to remove the spool file")
    assert server.delivery.events == []


def test_a_stopping_server_closes_a_bdat_transaction_and_removes_its_file_cleanly(
    start_server: Start,
) -> None:
    server = start_server(smtp={"spool_bytes": 64 * 1024, "shutdown_timeout": 0})
    chunk = b"Subject: spooled\r\n\r\n" + b"z" * 300 * 1024
    client = RawSmtp(server.port)
    try:
        client.send(ENVELOPE + bdat(chunk))
        assert client.codes(4) == [b"250"] * 4
        with capture_logs() as logs:
            server.stop()
        assert client.closed()
        assert client.buffer.startswith(b"421 4.3.2")
    finally:
        client.sock.close()
    spool = Path(server.config.data_dir) / "spool" / str(os.getpid())
    assert not spool.exists(), "a stopped server left its spool folder"
    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert errors == [], "the closed transaction's spool file was not removed cleanly"


# --- in memory: many generated messages, chunkings and TCP segmentations ----------------------

lines = st.lists(
    st.one_of(
        st.sampled_from([b"", b".", b"..", b".x", b"Subject: s", "Grüße".encode(), b"\x00\xff"]),
        st.binary(max_size=40).map(lambda line: line.replace(b"\r\n", b"\n")),
    ),
    max_size=12,
)
"""Lines for a message DATA can carry too (CRLF ends each, none over 1000 octets), many of
them with a leading dot for DATA to stuff and BDAT to send as it is."""


def stuffed(message: bytes) -> bytes:
    """The message as DATA sends it: a dot before each line's leading dot (RFC 5321 4.5.2)."""
    return (b"\r\n" + message).replace(b"\r\n.", b"\r\n..")[2:]


@settings(max_examples=200, deadline=None)
@given(
    message=lines.map(lambda found: b"".join(line + b"\r\n" for line in found)),
    chunk_cuts=st.lists(st.integers(0, 1 << 16), max_size=4),
    segment_cuts=st.lists(st.integers(0, 1 << 16), max_size=12),
)
def test_any_chunking_hands_the_data_hook_what_data_hands_it(
    message: bytes, chunk_cuts: list[int], segment_cuts: list[int]
) -> None:
    envelope = b"EHLO client.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
    by_data = envelope + b"DATA\r\n" + stuffed(message) + b".\r\nQUIT\r\n"
    chunks = cut(message, chunk_cuts)
    by_bdat = (
        envelope
        + b"".join(bdat(chunk) for chunk in chunks[:-1])
        + bdat(chunks[-1], last=True)
        + b"QUIT\r\n"
    )
    data_replies, data_messages = asyncio.run(
        session(MailrunnerSMTP, cut(by_data, segment_cuts), 0)
    )
    bdat_replies, bdat_messages = asyncio.run(
        session(MailrunnerSMTP, cut(by_bdat, segment_cuts), 0)
    )
    assert bdat_messages == data_messages == [(message, message)]
    assert data_replies.endswith(b"250 2.0.0 OK: message 1\r\n221 2.0.0 Bye\r\n")
    assert bdat_replies.endswith(b"250 2.0.0 OK: message 1\r\n221 2.0.0 Bye\r\n")
    assert bdat_replies.count(b" octets received\r\n") == len(chunks) - 1
