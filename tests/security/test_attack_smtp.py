"""Attacks on the SMTP side's memory and connection slots, against a running `mailrunner serve`.

Before the chunked DATA reader, one connection sending 9 MB of short lines without the
final dot made the server hold +254 MB (aiosmtpd kept a bytearray per line); nothing capped
the DATA held by all sessions together, nor the connections from one address.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from support.process_memory import memory_bytes, reset_peak
from support.processes import ServeProcess
from support.raw_smtp import RawSmtp, raw_smtp

MIB = 1024 * 1024
SHORT_LINES = b"a\r\n" * 3_000_000
"""9 MB of the shortest lines a client can send: under the default 10 MiB message size."""
NO_STORAGE = b"452 4.3.1 Insufficient system storage\r\n"


@contextmanager
def client(server: ServeProcess) -> Iterator[RawSmtp]:
    with raw_smtp(server.port) as connection:
        yield connection


def test_nine_megabytes_of_short_lines_without_the_final_dot_hold_little_memory(
    serve: Callable[..., ServeProcess],
) -> None:
    """The server's peak while it holds the unfinished message stays a small multiple of the
    bytes sent (it was 28x). The read timeout then ends the session: proof that every byte
    was read before the peak is taken."""
    server = serve(smtp={"read_timeout": 1.5}, logs={"level": "warning"})
    pid = server.process.pid
    with client(server) as attacker:
        idle = reset_peak(pid)
        attacker.start_data()
        attacker.send(SHORT_LINES)
        closing = attacker.reply()
        assert closing.startswith(b"421 4.4.2"), f"expected the read timeout, got {closing!r}"
    grown = memory_bytes(pid, "VmHWM") - idle
    assert grown < 3 * len(SHORT_LINES), (
        f"holding {len(SHORT_LINES) / MIB:.1f} MiB of short DATA lines raised the peak RSS by "
        f"{grown / MIB:.0f} MiB"
    )
    assert server.events() == []


def filler(subject: str, size: int) -> bytes:
    return f"Subject: {subject}\r\n\r\n".encode() + (b"f" * 78 + b"\r\n") * (size // 80)


def send_data(connection: RawSmtp, message: bytes) -> bytes:
    connection.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    assert connection.codes(3) == [b"250", b"250", b"354"]
    connection.send(message + b".\r\n")
    return connection.reply()


def test_concurrent_messages_beyond_the_in_flight_budget_get_452_and_the_server_keeps_serving(
    serve: Callable[..., ServeProcess],
) -> None:
    """DATA held in memory (here all of it: the spool starts beyond these messages)."""
    server = serve(
        smtp={"max_inflight_bytes": 2 * MIB, "spool_bytes": 4 * MIB}, logs={"level": "warning"}
    )
    with client(server) as holder, client(server) as other:
        holder.start_data()
        holder.send(filler("held", MIB * 3 // 2 + 8192))
        other.send(b"EHLO other.example\r\n")
        assert other.codes(1) == [b"250"]
        # the holder's bytes are held once they leave less than half a MiB for the others
        deadline = time.monotonic() + 5
        while True:
            other.send(f"MAIL FROM:<a@example.com> SIZE={MIB // 2}\r\nRSET\r\n".encode())
            refused, reset = other.codes(2)
            assert reset == b"250"
            if refused == b"452":
                break
            assert time.monotonic() < deadline, "the held DATA never counted against a budget"
        assert send_data(other, filler("second", MIB)) == NO_STORAGE
        holder.send(b".\r\n")
        assert holder.reply().startswith(b"250 2.0.0 OK: queued as ")
        assert send_data(other, filler("retried", MIB)).startswith(b"250 2.0.0 OK: queued as ")
    events = server.wait_events(2)
    assert [event["message"]["subject"] for event in events] == ["held", "retried"]


def test_spooled_data_leaves_the_in_flight_budget_to_other_sessions(
    serve: Callable[..., ServeProcess],
) -> None:
    """Beyond smtp.spool_bytes a message goes to disk as it arrives: a client holding a large
    DATA open keeps only spool_bytes of memory, and the others' messages still fit."""
    server = serve(
        smtp={"max_inflight_bytes": 2 * MIB, "spool_bytes": MIB // 4}, logs={"level": "warning"}
    )
    with client(server) as holder, client(server) as other:
        holder.start_data()
        holder.send(filler("held", MIB * 3 // 2 + 8192))
        other.send(b"EHLO other.example\r\n")
        assert other.codes(1) == [b"250"]
        assert send_data(other, filler("second", MIB)).startswith(b"250 2.0.0 OK: queued as ")
        holder.send(b".\r\n")
        assert holder.reply().startswith(b"250 2.0.0 OK: queued as ")
    events = server.wait_events(2)
    assert sorted(event["message"]["subject"] for event in events) == ["held", "second"]


def test_mail_declaring_a_size_beyond_the_in_flight_budget_is_refused_at_mail(
    serve: Callable[..., ServeProcess],
) -> None:
    """Beyond the whole budget it can never fit: refused for good (552), not 452 for ever;
    beyond what other sessions leave, 452 (tests/smtp/test_data_reader.py)."""
    server = serve(smtp={"max_inflight_bytes": 2 * MIB}, logs={"level": "warning"})
    with client(server) as sender:
        sender.send(f"EHLO big.example\r\nMAIL FROM:<a@example.com> SIZE={3 * MIB}\r\n".encode())
        assert sender.reply().startswith(b"250-")
        assert sender.reply() == b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
        sender.send(f"MAIL FROM:<a@example.com> SIZE={MIB}\r\n".encode())
        assert sender.reply()[:3] == b"250"


def test_connections_beyond_the_per_address_limit_get_421_and_are_closed(
    serve: Callable[..., ServeProcess],
) -> None:
    server = serve(
        smtp={"max_connections_per_ip": 3, "limit_loopback": True}, logs={"level": "warning"}
    )
    admitted = [RawSmtp(server.port) for _ in range(3)]
    try:
        assert all(connection.greeting.startswith(b"220 ") for connection in admitted)
        with client(server) as fourth:
            assert fourth.greeting.startswith(b"421 4.7.0 "), fourth.greeting
            assert fourth.reply() == b"", "a refused connection must be closed"
        admitted[0].send(b"QUIT\r\n")
        assert admitted[0].reply().startswith(b"221")
        assert admitted[0].reply() == b""
        admitted[0].sock.close()
        # the server forgets a connection before its socket closes: the slot is free now
        with client(server) as replacement:
            assert replacement.greeting.startswith(b"220 "), replacement.greeting
    finally:
        for connection in admitted:
            connection.sock.close()
