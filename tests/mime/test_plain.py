"""The in-memory parse's two shortcuts give exactly the parse of every byte fed to `email`,
whatever the headers, the transfer encoding, the charset, the line ends or the damage: a
message without MIME structure has only its header block fed (`mime.plain`), and a larger
MIME message has its large leaf bodies read from its bytes instead of fed (`mime.stream`'s
stand-ins, `parse.IN_MEMORY_SPILL_BYTES`)."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mime_grammar import header_values, line_ends, messages

from mailrunner.mime import parse as parse_module
from mailrunner.mime.parse import ParsedMessage, ParseOptions, parse
from mailrunner.mime.plain import plain_message

CORPUS = Path(__file__).parent / "corpus"
CASES = sorted(CORPUS.glob("*.eml"))
DEFAULTS = ParseOptions()
DEFAULT_HEADER_BYTES = DEFAULTS.max_header_bytes
FIELD_NAMES = [b"From", b"To", b"Subject", b"Message-ID", b"content-type"]
limits = st.builds(
    ParseOptions,
    max_depth=st.sampled_from([1, 2, 50]),
    max_parts=st.sampled_from([1, 3, 1000]),
    max_header_bytes=st.sampled_from([64, 1024 * 1024]),
)


def fed_whole(raw: bytes, options: ParseOptions = DEFAULTS) -> ParsedMessage:
    """The parse without its shortcuts: every byte of every message fed to the parser."""
    with (
        mock.patch.object(parse_module, "plain_message", return_value=None),
        mock.patch.object(parse_module, "IN_MEMORY_SPILL_BYTES", None),
    ):
        return parse(raw, options)


def spilling(raw: bytes, options: ParseOptions, spill_over: int) -> ParsedMessage:
    """The in-memory parse with leaf bodies over `spill_over` bytes read from `raw` (any
    message longer than that; the plain path off, so MIME-less messages spill too)."""
    with (
        mock.patch.object(parse_module, "plain_message", return_value=None),
        mock.patch.object(parse_module, "IN_MEMORY_SPILL_BYTES", spill_over),
    ):
        return parse(raw, options)


def takes_fast_path(raw: bytes, options: ParseOptions = DEFAULTS) -> bool:
    return plain_message(raw, options.max_header_bytes) is not None


def variants(eml: Path) -> list[bytes]:
    """The corpus file as stored (LF) and as an SMTP client sends it (CRLF)."""
    stored = eml.read_bytes()
    return [stored, stored.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")]


@pytest.mark.parametrize("eml", CASES, ids=[case.stem for case in CASES])
def test_every_corpus_message_parses_as_when_fed_whole(eml: Path) -> None:
    for raw in variants(eml):
        assert parse(raw) == fed_whole(raw)


def test_most_one_part_corpus_messages_take_the_fast_path() -> None:
    """The test above proves something only if the corpus reaches the fast path."""
    taken = sum(takes_fast_path(raw) for eml in CASES for raw in variants(eml))
    assert taken >= len(CASES) // 2


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(messages(), limits)
def test_any_message_parses_as_when_fed_whole(raw: bytes, options: ParseOptions) -> None:
    assert parse(raw, options) == fed_whole(raw, options)


SINGLE_TYPES = [
    b"",
    b"text/plain",
    b"text/plain; charset=utf-8",
    b'TEXT/PLAIN; charset="iso-8859-1"',
    b"text/plain; charset=x-unknown",
    b"text/plain; charset*=utf-8''%C3%A9",
    b"text/html; charset=utf-8",
    b"application/pdf; name=report.pdf",
    b"text",
    b"multipart/mixed",
    b"message/rfc822",
    b'multipart/alternative; boundary="b"',
]
ENCODINGS = [b"", b"7bit", b"8bit", b"binary", b"quoted-printable", b"base64", b"x-uuencode", b"x"]
ODD_LINES = [
    b"From sender@example.com Thu Dec  3 12:00:00 2026",
    b" continued",
    b"\tcontinued",
    b"no colon here",
    b":no name",
    b"X-Empty:",
    b"Content-Disposition: attachment; filename=a.txt",
    b"Content-Disposition: inline",
    b"Content-ID: <cid@example.com>",
    b"Subject: caf\xc3\xa9 =?utf-8?q?=C3=A9t=C3=A9?=",
    b"Subject: \xff\xfe",
]


@st.composite
def one_part_messages(draw: st.DrawFn) -> bytes:
    """Headers in any order and shape, at most a few Content-Types, then a body of any bytes
    and line ends: the messages the fast path may take, and their near misses."""
    eol = draw(line_ends())
    lines: list[bytes] = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["type", "encoding", "odd", "plain"]))
        if kind == "type":
            lines.append(b"Content-Type: " + draw(st.sampled_from(SINGLE_TYPES)))
        elif kind == "encoding":
            lines.append(b"Content-Transfer-Encoding: " + draw(st.sampled_from(ENCODINGS)))
        elif kind == "odd":
            lines.append(draw(st.sampled_from(ODD_LINES)))
        else:
            name = draw(st.sampled_from(FIELD_NAMES))
            lines.append(name + b":" + draw(header_values(eol)).removesuffix(eol))
    separator = draw(st.sampled_from([eol, eol, b"\r\n", b"\n", b"\r", b"", b"body line" + eol]))
    body = draw(
        st.lists(
            st.one_of(
                st.binary(max_size=30),
                st.sampled_from([b"\r\n", b"\n", b"\r", b"=\r\n", b"=C3=A9", b"aGVsbG8=", b"--b"]),
            ),
            max_size=12,
        )
    )
    return b"".join(line + eol for line in lines) + separator + b"".join(body)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(one_part_messages(), limits)
def test_any_one_part_message_parses_as_when_fed_whole(raw: bytes, options: ParseOptions) -> None:
    assert parse(raw, options) == fed_whole(raw, options)


SMTP_SOURCE_STYLE = (
    b"From: <foo@bench.example>\r\nTo: <foo@bench.example>\r\n"
    b"Date: Thu,  3 Dec 2026 15:55:21 +0000 (UTC)\r\nMessage-Id: <1.2@bench.example>\r\n\r\n"
    + b"1XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX\r\n"
    * 20
)


@pytest.mark.parametrize(
    "raw",
    [
        SMTP_SOURCE_STYLE,
        b"Subject: no body",
        b"",
        b"\r\nonly a body\r\n",
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable"
        b"\r\n\r\ncaf=C3=A9\r\n",
        b"Content-Type: text/html\r\n\r\n<p>hi</p>\r\n",
        b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0x\r\n",
    ],
    ids=["smtp-source", "headers-only", "empty", "body-only", "qp-text", "html", "pdf"],
)
def test_one_part_messages_take_the_fast_path(raw: bytes) -> None:
    assert takes_fast_path(raw)
    assert parse(raw) == fed_whole(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n',
        b"Content-Type: multipart/mixed\r\n\r\nno boundary\r\n",
        b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nx\r\n",
        b"Subject: a\r\nnot a header line\r\n\r\nbody\r\n",
    ],
    ids=["multipart", "multipart-without-boundary", "embedded", "no-separator"],
)
def test_structured_or_odd_messages_take_the_full_parse(raw: bytes) -> None:
    assert not takes_fast_path(raw)


def test_a_header_block_over_the_limit_takes_the_full_parse_and_its_cut() -> None:
    raw = b"Subject: x\r\n" + b"X-Long: " + b"y" * 100 + b"\r\n\r\nbody\r\n"
    options = ParseOptions(max_header_bytes=64)
    assert not takes_fast_path(raw, options)
    assert any("header block" in error for error in parse(raw, options).parse_errors)
    assert takes_fast_path(raw, ParseOptions(max_header_bytes=DEFAULT_HEADER_BYTES))


@pytest.mark.parametrize("eml", CASES, ids=[case.stem for case in CASES])
def test_every_corpus_message_parses_as_when_fed_whole_with_its_bodies_spilled(eml: Path) -> None:
    for raw in variants(eml):
        assert spilling(raw, DEFAULTS, 0) == fed_whole(raw)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(messages(), limits, st.sampled_from([0, 8, 64]))
def test_any_message_with_its_bodies_spilled_parses_as_when_fed_whole(
    raw: bytes, options: ParseOptions, spill_over: int
) -> None:
    assert spilling(raw, options, spill_over) == fed_whole(raw, options)


def test_a_large_mime_message_in_memory_has_its_large_bodies_read_not_fed() -> None:
    """The default threshold reaches a 70 KB attachment, and the result is the fed one."""
    attachment = base64.encodebytes(bytes(range(256)) * 280).replace(b"\n", b"\r\n")
    raw = (
        b'Subject: report\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        b"--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + attachment
        + b"--b--\r\n"
    )
    assert parse_module.IN_MEMORY_SPILL_BYTES is not None
    assert len(raw) > parse_module.IN_MEMORY_SPILL_BYTES
    with mock.patch.object(
        parse_module, "parse_in_chunks", wraps=parse_module.parse_in_chunks
    ) as feed:
        result = parse(raw)
    (call,) = feed.call_args_list
    assert call.kwargs["stand_ins"], "the attachment was fed"
    assert result == fed_whole(raw)
    assert result.attachments[0].content == bytes(range(256)) * 280


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.sampled_from(["a", "\r", "\n", "\r\n", "\udc80", "é", "\u2028", "\x85"])).map(
        "".join
    )
)
def test_line_ends_become_lf_as_the_regex_makes_them(text: str) -> None:
    """The body's line ends: CRLF and a lone CR become LF, nothing else changes."""
    assert parse_module._lines_of(text) == re.sub(r"\r\n?", "\n", text)


def test_a_mime_message_of_small_parts_is_fed_whole_without_the_walk() -> None:
    """Over the threshold in all but no body near it: the walk would only add its cost."""
    part = b"--b\r\nContent-Type: text/plain\r\n\r\n" + b"a line of text\r\n" * 150
    raw = b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n' + part * 3 + b"--b--\r\n"
    assert parse_module.IN_MEMORY_SPILL_BYTES is not None
    assert len(raw) > parse_module.IN_MEMORY_SPILL_BYTES
    with mock.patch.object(parse_module, "plan_stream", wraps=parse_module.plan_stream) as walk:
        result = parse(raw)
    walk.assert_not_called()
    assert result == fed_whole(raw)
    assert result.body.count("a line of text") == 150
