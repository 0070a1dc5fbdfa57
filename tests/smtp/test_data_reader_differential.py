"""mailrunner's chunked DATA reader against aiosmtpd's own line-by-line `SMTP.smtp_DATA`.

Both run in mailrunner's protocol class (so both answer through mailrunner's reply
rewrites); the reference differs only in using aiosmtpd's `smtp_DATA`. Each session is fed
the same bytes, cut into the same chunks, through an in-memory transport, and must produce
the same reply bytes and hand the same messages to the DATA hook.
"""

from __future__ import annotations

import asyncio
import itertools

from aiosmtpd.smtp import SMTP
from hypothesis import event, given, settings
from hypothesis import strategies as st

from mailrunner.smtp.protocol import MailrunnerSMTP
from support.memory_smtp import session

PRELUDE = b"EHLO client.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
NEXT_TRANSACTION = b"MAIL FROM:<c@example.com>\r\nRCPT TO:<d@example.com>\r\nDATA\r\n"


class AiosmtpdData(MailrunnerSMTP):
    """The reference: mailrunner's protocol with aiosmtpd's own DATA collection."""

    smtp_DATA = SMTP.smtp_DATA


def assert_same(chunks: list[bytes], size_limit: int = 0) -> bytes:
    """Run both; returns the replies (the same for both)."""
    expected = asyncio.run(session(AiosmtpdData, [PRELUDE, *chunks], size_limit))
    actual = asyncio.run(session(MailrunnerSMTP, [PRELUDE, *chunks], size_limit))
    assert actual[0] == expected[0], "replies differ from aiosmtpd's"
    assert actual[1] == expected[1], "messages handed to the DATA hook differ from aiosmtpd's"
    return actual[0]


def cut(stream: bytes, offsets: list[int]) -> list[bytes]:
    bounds = [0, *sorted({offset % (len(stream) + 1) for offset in offsets}), len(stream)]
    return [stream[start:end] for start, end in itertools.pairwise(bounds)]


# A line is judged around LINE_LIMIT (1001 octets with CRLF) and aiosmtpd's stream limit
# (1001 before CRLF); runs of these lengths sit on each side of both.
run_lengths = st.one_of(st.integers(0, 12), st.integers(995, 1006), st.sampled_from([2047, 5000]))
tokens = st.one_of(
    st.sampled_from(
        [
            b"\r\n",
            b"\r",
            b"\n",
            b".",
            b"..",
            b"\r\n.\r\n",
            b"\r\n..\r\n",
            b"\n.\n",
            b"\r.\r",
            b"\n.\r\n",
            b"\r\n.\n",
            b"\x00",
            b"\xff\xfe\xe9",
            "Grüße".encode(),
            b"Subject: s\r\n",
        ]
    ),
    st.builds(lambda length, octet: octet * length, run_lengths, st.sampled_from([b"x", b"."])),
    st.binary(max_size=8),
)
bodies = st.lists(tokens, max_size=16).map(b"".join)
endings = st.sampled_from([b"\r\n.\r\n", b"\r\n.\r\n", b"\r\n.\r\n", b".\r\n", b""])
"""Mostly a final dot; `.` alone ends only an empty message, and a stream may stop short."""
pipelined = st.sampled_from(
    [b"", b"NOOP\r\n", b"QUIT\r\n", NEXT_TRANSACTION, b"RSET\r\nNOOP\r\n" + NEXT_TRANSACTION]
)
streams = st.lists(st.tuples(bodies, endings, pipelined), min_size=1, max_size=3).map(
    lambda parts: b"".join(b"".join(part) for part in parts)
)
size_limits = st.sampled_from([0, 1, 10, 100, 1000, 1003, 1005, 2010, 6000])


# no deadline: the two servers share a loop with whatever else the machine runs, and what
# is compared is the transcript, not the time
@settings(max_examples=300, deadline=None)
@given(stream=streams, offsets=st.lists(st.integers(0, 1 << 16), max_size=24), limit=size_limits)
def test_random_streams_get_the_same_replies_and_messages_as_aiosmtpd(
    stream: bytes, offsets: list[int], limit: int
) -> None:
    transcript = assert_same(cut(stream, offsets), limit)
    for reply in (b"250 2.0.0 OK: message", b"500 5.5.2", b"552 5.3.4", b"221"):
        if reply in transcript:
            event(f"answered {reply.decode()}")


EDGES = b"..dot\r\n.\r\n\r\nbody\n.\nstill\r.\rin\n.\r\nit\r\n.\n\r\n..\r\n.\r\nNOOP\r\nQUIT\r\n"


def test_every_split_of_a_stream_full_of_edges_reads_as_aiosmtpd_reads_it() -> None:
    """Also while a refused message is drained: after a line too long, or over the size."""
    for stream, limit in ((EDGES, 0), (EDGES, 1), (b"z" * 1100 + b"\r\n" + EDGES, 0)):
        for offset in range(len(stream) + 1):
            assert_same([stream[:offset], stream[offset:]], limit)


def test_a_stream_fed_octet_by_octet_reads_as_aiosmtpd_reads_it() -> None:
    assert_same([bytes([octet]) for octet in EDGES])


def test_an_empty_message_right_after_data_reads_as_aiosmtpd_reads_it() -> None:
    assert_same([b".\r\nNOOP\r\n"])
    assert_same([b".", b"\r", b"\n", b"QUIT\r\n"])


def test_long_lines_and_size_limits_are_judged_in_aiosmtpds_order() -> None:
    """Around both thresholds, whichever of 500 and 552 aiosmtpd answers, so do we."""
    for length in range(996, 1008):
        line = b"y" * length + b"\r\n"
        for limit in (0, length, length + 1, length + 2, length + 3, length + 12):
            for split in (1, 500, length, length + 1):
                stream = b"a\r\n" * 4 + line + b".\r\nNOOP\r\n"
                assert_same([stream[:split], stream[split:]], limit)


def test_lines_that_all_start_with_a_dot_read_as_aiosmtpd_reads_them() -> None:
    """The final dot is looked for past the first stuffed line by a search of its own."""
    stream = b"..a\r\n" * 50 + b".\r\n..\r\n.\r\nNOOP\r\n" + NEXT_TRANSACTION + b"..b\r\n.\r\n"
    for offset in range(0, len(stream) + 1, 7):
        assert_same([stream[:offset], stream[offset:]])


def test_dots_inside_lines_before_and_after_a_stuffed_line_read_as_aiosmtpd_reads_them() -> None:
    """A few dots are looked at one by one, more are searched past: both ways find the same
    stuffed lines and final dot, wherever the read is cut."""
    for dots in (1, 7, 8, 9, 30):
        text = b"a.b " * dots + b"\r\n"
        stream = text + b"..c\r\n" + text + b".\r\nNOOP\r\n"
        for offset in range(0, len(stream) + 1, 5):
            assert_same([stream[:offset], stream[offset:]])
        assert_same([text * 3 + b".\r\nQUIT\r\n"])
