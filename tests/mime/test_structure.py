"""MIME structure within limits: the pre-scan agrees with `email` about every part, cuts where
a limit is reached (recorded, message still parsed), and containers never become
attachments."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from email.message import Message, _parseparam  # the stdlib behaviour part.py must keep
from email.policy import compat32

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mime_grammar import messages

from mailrunner.mime.attachments import MemoryStorage
from mailrunner.mime.build import EventBuilder
from mailrunner.mime.parse import ParseOptions, parse, parse_in_chunks
from mailrunner.mime.part import MimePart, split_parameters
from mailrunner.mime.prescan import plan_feed, within_every_limit
from support.events import arrival, decode_event

UNLIMITED = {"max_parts": 10**9, "max_depth": 10**6, "max_header_bytes": 10**9}
TOKENS = [
    b"--b",
    b"--b--",
    b"--c",
    b"--c--",
    b" ",
    b"\t",
    b"\r",
    b"\n",
    b"\r\n",
    b"x",
    b"a: b",
    b"--b:",
    b"From x",
    b"Content-Type: multipart/mixed; boundary=b",
    b'Content-Type: multipart/mixed; boundary="b"',
    b"content-type: multipart/alternative;\r\n boundary=c",
    b"Content-Type: multipart/digest; boundary=c",
    b"Content-Type: multipart/mixed",
    b"Content-Type: multipart/mixed; boundary*=idna''%FF",
    b"Content-Type: message/rfc822",
    b"Content-Type: message/delivery-status",
    b"Content-Type: text/plain",
]
token_soup = st.lists(st.sampled_from(TOKENS), max_size=60).map(b"".join)
"""Lines that are almost MIME: boundaries of nested parts, blank lines, header-looking body
lines, bare CRs; where the pre-scan and the parser would disagree if either were sloppy."""


def parser_parts(message: Message) -> int:
    return sum(1 for _ in message.walk()) - 1


def mixed(parts: list[bytes], boundary: bytes = b"b") -> bytes:
    head = b"Subject: s\r\nContent-Type: multipart/mixed; boundary=" + boundary + b"\r\n\r\n"
    body = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts)
    return head + body + b"--" + boundary + b"--\r\n"


def attachment(number: int) -> bytes:
    return (
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; filename=f%d.bin\r\n\r\n" % number
    ) + b"data %d" % number


def build(raw: bytes, options: ParseOptions) -> dict[str, object]:
    builder = EventBuilder(
        hostname="mx.test",
        options=options,
        storage=MemoryStorage(),
        include_raw=True,
        offload_bytes=1 << 30,
    )
    return decode_event(asyncio.run(builder.build(arrival(), raw)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(messages(), token_soup, st.binary(max_size=300)))
def test_the_prescan_meets_exactly_the_parts_the_parser_builds(raw: bytes) -> None:
    plan = plan_feed(raw, **UNLIMITED)
    assert plan.spans == (((0, len(raw)),) if raw else ())
    assert plan.cuts == ()
    assert plan.parts == parser_parts(parse_in_chunks(raw))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(messages(), token_soup),
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=1, max_value=3),
    st.integers(min_value=1, max_value=80),
)
@example(  # each message/rfc822 cut at the depth limit still gets an inner message
    raw=b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
    + b"--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: x\r\n\r\nhi\r\n" * 2
    + b"--b--\r\n",
    max_parts=2,
    max_depth=1,
    max_header_bytes=45,
)
def test_the_parser_builds_no_part_beyond_the_limits(
    raw: bytes, max_parts: int, max_depth: int, max_header_bytes: int
) -> None:
    plan = plan_feed(
        raw, max_parts=max_parts, max_depth=max_depth, max_header_bytes=max_header_bytes
    )
    message = parse_in_chunks(raw, spans=plan.spans)
    # at most one more: a message/* part cut right after its headers still gets its inner one
    assert parser_parts(message) <= max_parts + 1
    assert depth_of(message) <= max_depth + 2
    for part in message.walk():  # name, colon and value: at most the bytes fed
        size = sum(len(name) + 1 + len(str(value)) for name, value in part.raw_items())
        assert size <= max_header_bytes, f"{size} header bytes fed for one part"
    assert plan.cuts or plan.spans == (((0, len(raw)),) if raw else ())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(messages(), token_soup),
    st.integers(min_value=1, max_value=40),
    st.integers(min_value=1, max_value=12),
    st.integers(min_value=1, max_value=600),
)
def test_a_message_the_quick_bounds_pass_is_one_the_prescan_would_not_cut(
    raw: bytes, max_parts: int, max_depth: int, max_header_bytes: int
) -> None:
    limits = {"max_parts": max_parts, "max_depth": max_depth, "max_header_bytes": max_header_bytes}
    if within_every_limit(raw, **limits):
        plan = plan_feed(raw, **limits)
        assert plan.cuts == (), f"the quick bounds let through a message the walk cuts: {raw!r}"


def embedded_chain(levels: int) -> bytes:
    return b"Content-Type: message/rfc822\r\n\r\n" * levels + b"Subject: inner\r\n\r\nbody\r\n"


def empty_parts(count: int) -> bytes:
    return b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n\r\n" * count


def digest_of_digests(levels: int) -> bytes:
    """Digests whose parts are messages by default: two levels per Content-Type field."""
    raw = b"Subject: leaf\r\n\r\nbody\r\n"
    for level in range(levels):
        boundary = b"d%d" % level
        raw = (
            b"Content-Type: multipart/digest; boundary=" + boundary + b"\r\n\r\n"
            b"--" + boundary + b"\r\n\r\n" + raw + b"--" + boundary + b"--\r\n"
        )
    return raw


def delivery_status(blocks: int) -> bytes:
    """Every blank line of a delivery-status body starts a part of its own."""
    return b"Content-Type: message/delivery-status\r\n\r\n" + b"a: b\r\n\r\n" * blocks


@pytest.mark.parametrize(
    ("build", "may_skip"),
    [
        (embedded_chain, True),
        (empty_parts, True),
        (digest_of_digests, True),
        (delivery_status, False),  # blank lines make parts: always walked
    ],
)
def test_the_quick_bounds_never_pass_a_message_at_the_edge_of_a_limit(
    build: Callable[[int], bytes], may_skip: bool
) -> None:
    """Around every limit: whenever the walk would cut, the quick bounds send it there."""
    passed = 0
    for size in range(1, 25):
        raw = build(size)
        for limit in range(1, 30):
            for limits in (
                {"max_parts": limit, "max_depth": 500, "max_header_bytes": 2**20},
                {"max_parts": 10**6, "max_depth": limit, "max_header_bytes": 2**20},
                {"max_parts": 10**6, "max_depth": 500, "max_header_bytes": limit * 8},
            ):
                if within_every_limit(raw, **limits):
                    passed += 1
                    assert plan_feed(raw, **limits).cuts == (), (size, limits)
    assert bool(passed) == may_skip, f"{passed} messages skipped the walk"


def depth_of(message: Message) -> int:
    deepest, stack = 0, [(message, 0)]
    while stack:
        part, depth = stack.pop()
        deepest = max(deepest, depth)
        if part.is_multipart():  # a leaf's get_payload() decodes by its (maybe bogus) charset
            payload = part.get_payload()
            stack.extend((child, depth + 1) for child in payload if isinstance(child, Message))
    return deepest


def test_parts_beyond_max_parts_are_not_parsed_and_the_cut_is_recorded() -> None:
    raw = mixed([b"Content-Type: text/plain\r\n\r\nthe body"] + [attachment(n) for n in range(49)])
    event = build(raw, ParseOptions(max_parts=10))
    attachments = event["attachments"]
    assert isinstance(attachments, list)
    assert [a["filename"] for a in attachments] == [f"f{n}.bin" for n in range(9)]
    message = event["message"]
    assert isinstance(message, dict)
    assert message["body"] == "the body"
    cut = raw.index(
        b"--b\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; filename=f9.bin"
    )
    assert (
        f"MIME parts over 10: the last {len(raw) - cut} bytes were not parsed"
        in (event["parse_errors"])
    )
    assert base64.b64decode(str(message["raw"])) == raw, "the raw message stays whole"


def test_a_million_empty_parts_cost_about_what_one_attachment_costs() -> None:
    many = mixed([b""] * 1_000_000)
    data = base64.encodebytes(bytes(len(many) * 3 // 4)).replace(b"\n", b"\r\n")
    one = mixed([b"Content-Transfer-Encoding: base64\r\n\r\n" + data])

    def cpu(raw: bytes) -> float:
        best = float("inf")
        for _ in range(3):
            started = time.process_time()
            parse(raw)
            best = min(best, time.process_time() - started)
        return best

    assert cpu(many) <= 2 * cpu(one) + 0.05, "a million empty parts must not be parsed one by one"
    assert len(parse(many).attachments) == 999


def folded_header(lines: int) -> bytes:
    return b"X-Filler: start" + b"".join(b"\r\n x%05d" % n for n in range(lines)) + b"\r\n"


def test_a_header_block_over_max_header_bytes_keeps_the_lines_that_fit() -> None:
    raw = b"Subject: kept\r\n" + folded_header(2000) + b"To: cut@example.com\r\n\r\nbody\r\n"
    parsed = parse(raw, ParseOptions(max_header_bytes=1024))
    assert parsed.subject == "kept"
    assert parsed.to == [], "the lines past the limit are not parsed"
    assert parsed.body == "body\n"
    filler = parsed.headers["X-Filler"][0]
    assert filler.startswith("start x00000")
    assert len(filler) < 1024
    cut = [e for e in parsed.parse_errors if e.startswith("header block at byte 0 over 1024")]
    assert cut, parsed.parse_errors


def test_a_nested_part_with_a_huge_header_block_keeps_its_body() -> None:
    raw = mixed(
        [
            b"Content-Type: text/plain\r\n" + folded_header(5000) + b"\r\nthe body",
            attachment(1),
        ]
    )
    parsed = parse(raw, ParseOptions(max_header_bytes=4096))
    assert parsed.body == "the body"
    assert [a.filename for a in parsed.attachments] == ["f1.bin"]
    assert any("over 4096 bytes" in error for error in parsed.parse_errors)


def test_embedded_messages_deeper_than_max_depth_are_cut_and_recorded() -> None:
    raw = b"Content-Type: message/rfc822\r\n\r\n" * 3000 + b"Subject: deep\r\n\r\nx\r\n"
    parsed = parse(raw, ParseOptions(max_depth=8))
    assert "MIME depth over 8: parts nested deeper were not parsed" in parsed.parse_errors


@pytest.mark.parametrize(
    ("case", "raw"),
    [
        ("preamble only", b"Content-Type: multipart/mixed; boundary=b\r\n\r\njust a preamble\r\n"),
        ("no boundary", b"Content-Type: multipart/mixed\r\n\r\n--b\r\n\r\ntext\r\n--b--\r\n"),
        ("unused boundary", b"Content-Type: multipart/mixed; boundary=a\r\n\r\n--b\r\n\r\nx\r\n"),
        ("close first", b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b--\r\n--b\r\n\r\nx"),
        ("undecodable", b"Content-Type: multipart/mixed; boundary*=idna''%FF\r\n\r\n--b\r\n\r\nx"),
        ("unorderable", b"Content-Type: multipart/mixed; boundary*=b; boundary*0=b\r\n\r\nx\r\n"),
        ("empty", b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"),
    ],
)
def test_a_multipart_without_readable_parts_is_neither_body_nor_attachment(
    case: str, raw: bytes
) -> None:
    parsed = parse(raw)
    assert parsed.attachments == [], case
    assert parsed.body == parsed.html_body == ""
    assert any("multipart/mixed without readable parts" in e for e in parsed.parse_errors), (
        parsed.parse_errors
    )


def test_an_unreadable_multipart_inside_a_message_leaves_its_siblings_alone() -> None:
    raw = mixed(
        [
            b"Content-Type: text/plain\r\n\r\nthe body",
            b"Content-Type: multipart/alternative; boundary=inner\r\n\r\nonly a preamble",
            attachment(1),
        ]
    )
    parsed = parse(raw)
    assert parsed.body == "the body"
    assert [a.filename for a in parsed.attachments] == ["f1.bin"]
    unreadable = "part 3: multipart/alternative without readable parts"
    assert any(error.startswith(unreadable) for error in parsed.parse_errors)


parameter_text = st.text(alphabet=st.sampled_from(list(';="\\ aB*0\t\r\n')), max_size=40)


@settings(max_examples=500, deadline=None)
@given(parameter_text)
def test_parameters_split_exactly_as_email_splits_them(text: str) -> None:
    assert split_parameters(text) == _parseparam(text)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["boundary", "Boundary", "boundary*", "boundary*0", "boundary*1*"]),
            st.sampled_from(['"a;b"', "x", "utf-8''%41", "''", '"q\\"', "=", ""]),
        ),
        max_size=4,
    ),
    st.booleans(),
)
def test_parameters_read_as_email_reads_them_and_never_raise(
    params: list[tuple[str, str]], unquote: bool
) -> None:
    value = "multipart/mixed" + "".join(f"; {name}={text}" for name, text in params)
    ours, theirs = MimePart(), Message(policy=compat32)
    ours["Content-Type"] = theirs["Content-Type"] = value
    try:
        expected: object = (
            theirs.get_param("boundary", unquote=unquote),
            theirs.get_boundary(),
        )
    except (TypeError, ValueError):  # the stdlib raises; ours answers without one
        expected = None
    answer = (ours.get_param("boundary", unquote=unquote), ours.get_boundary())
    if expected is not None:
        assert answer == expected


def best_cpu(run: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        run()
        best = min(best, time.process_time() - started)
    return best


def test_parameters_cost_time_linear_in_their_size() -> None:
    """The stdlib copies the rest of the header at every `;`: 8x the size took 60x longer."""

    def message(size: int) -> bytes:
        params = b"".join(b";\r\n a%d=b" % n for n in range(size // 10))
        return mixed([b"Content-Type: text/plain; name=x.txt" + params + b"\r\n\r\nx"])

    small, large = message(64 * 1024), message(512 * 1024)
    ratio = best_cpu(lambda: parse(large)) / best_cpu(lambda: parse(small))
    assert ratio <= 12, f"512 KB of parameters took {ratio:.1f}x the time of 64 KB"


@pytest.mark.parametrize("charset", ["undefined", "punycode", "zlib", "x-unknown"])
@pytest.mark.parametrize("content_type", ["text/plain", "application/pdf", "message/rfc822"])
def test_an_8bit_body_in_an_unusable_charset_loses_nothing_else(
    charset: str, content_type: str
) -> None:
    """Reading such a body undecoded makes `email` decode its 8-bit bytes by the charset,
    which raised and cost the message its whole structure."""
    raw = (
        b"Subject: x\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        b"--b\r\nContent-Type: "
        + content_type.encode()
        + b"; charset="
        + charset.encode()
        + b"\r\n"
        b"Content-Disposition: attachment\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"YWJj\xff\r\n--b--\r\n"
    )
    parsed = parse(raw)
    assert parsed.body == "hello"
    assert [a.content_type for a in parsed.attachments] == [content_type]
    assert not [e for e in parsed.parse_errors if "could not be read" in e], parsed.parse_errors


def test_an_8bit_text_body_in_charset_punycode_decodes_as_utf8_and_says_so() -> None:
    raw = (
        b"Content-Type: text/plain; charset=punycode\r\nContent-Transfer-Encoding: base64\r\n"
        b"\r\n\xffY2Fmw6k=\r\n"  # base64 of UTF-8 `café`, after a byte base64 skips
    )
    parsed = parse(raw)
    assert parsed.body == "café"
    unusable = "part 1 (text/plain): charset 'punycode' is unknown or not a text charset"
    assert any(error.startswith(unusable) for error in parsed.parse_errors), parsed.parse_errors


@pytest.mark.parametrize("charset", ["punycode", "idna", "undefined", "utf-8\x00"])
def test_an_rfc2231_boundary_in_a_codec_that_is_no_charset_is_read_as_utf8(charset: str) -> None:
    """`email` would decode it by that codec: `punycode` in quadratic time."""
    quoted = "".join(f"%{ord(c):02X}" for c in charset)
    raw = (
        f"Content-Type: multipart/mixed; boundary*={quoted}''b\r\n\r\n".encode()
        + b"--b\r\nContent-Type: text/plain\r\n\r\nthe body\r\n--b--\r\n"
    )
    parsed = parse(raw)
    assert parsed.body == "the body"
    assert "part 1: InvalidHeaderDefect" in parsed.parse_errors


def test_an_rfc2231_charset_in_punycode_is_read_as_utf8() -> None:
    raw = b"Content-Type: text/plain; charset*=punycode''iso-8859-1\r\n\r\ncaf\xe9\r\n"
    parsed = parse(raw)
    assert parsed.body == "café\n"
    assert "part 1: InvalidHeaderDefect" in parsed.parse_errors


def test_a_parameter_numbered_past_what_int_reads_costs_only_the_rfc2231_parameters() -> None:
    """`decode_params` calls `int()` on the number, which refuses over 4,300 digits: the
    ValueError lost the body and every attachment."""
    numbered = b"; x*" + b"9" * 5000 + b"=a; name*0=y.txt"
    raw = mixed(
        [
            b"Content-Type: text/plain; charset=iso-8859-1" + numbered + b"\r\n\r\ncaf\xe9",
            attachment(1),
        ]
    )
    parsed = parse(raw)
    assert parsed.body == "café"
    assert [a.filename for a in parsed.attachments] == ["f1.bin"]
    assert "part 2: InvalidHeaderDefect" in parsed.parse_errors
    assert not [e for e in parsed.parse_errors if "could not be read" in e], parsed.parse_errors
