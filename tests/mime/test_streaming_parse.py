"""A spooled message is parsed with its large bodies read from the file (`mime.stream`): the
result is exactly `parse`'s for the same bytes, and a large part costs about its decoded size
instead of several times it."""

from __future__ import annotations

import asyncio
import base64
import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mime_grammar import messages

from mailrunner.mime.parse import ParsedMessage, ParseOptions, parse, parse_file, parse_in_chunks
from mailrunner.mime.stream import SPILL_BYTES, plan_stream
from mailrunner.smtp.spool import MessageContent
from support.events import BUILDER, arrival

CORPUS = Path(__file__).parent / "corpus"
CASES = sorted(CORPUS.glob("*.eml"))
MIB = 1024 * 1024
limits = st.builds(
    ParseOptions,
    max_depth=st.sampled_from([1, 2, 50]),
    max_parts=st.sampled_from([1, 3, 1000]),
    max_header_bytes=st.sampled_from([64, 1024 * 1024]),
)


def corpus_case(eml: Path) -> tuple[bytes, ParseOptions]:
    raw = eml.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    expected = json.loads(eml.with_suffix(".json").read_text(encoding="utf-8"))
    return raw, ParseOptions(max_depth=expected.get("max_depth", 50))


def spooled(folder: Path, raw: bytes) -> Path:
    path = folder / "message.eml"
    path.write_bytes(raw)
    return path


def stand_ins_landed(raw: bytes, options: ParseOptions, spill_over: int) -> int:
    """How many bodies the spilling parse read from the file (0 if it fell back to the feed)."""
    plan, stand_ins = plan_stream(
        raw,
        max_parts=options.max_parts,
        max_depth=options.max_depth,
        max_header_bytes=options.max_header_bytes,
        spill_over=spill_over,
    )
    message = parse_in_chunks(raw, spans=plan.spans, stand_ins=stand_ins.feed)
    return len(stand_ins.feed) if stand_ins.attach(message) else 0


SPOOLABLE = [case for case in CASES if case.stat().st_size > 0]
"""A spool file is never empty (an empty DATA stays in memory)."""


@pytest.mark.parametrize("eml", SPOOLABLE, ids=[case.stem for case in SPOOLABLE])
def test_every_corpus_message_parses_from_the_spool_exactly_as_in_memory(
    eml: Path, tmp_path: Path
) -> None:
    raw, options = corpus_case(eml)
    assert parse_file(spooled(tmp_path, raw), options, spill_over=0) == parse(raw, options)


def test_the_corpus_bodies_are_read_from_the_file_not_fed() -> None:
    """Every corpus message with a body takes the spilling path (no fallback to the feed)."""
    landed = [eml.stem for eml in CASES if stand_ins_landed(*corpus_case(eml), spill_over=0) > 0]
    assert len(landed) >= len(CASES) - 3, sorted({eml.stem for eml in CASES} - set(landed))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=messages(), options=limits, spill_over=st.sampled_from([0, 8, 64]))
def test_any_message_parses_from_the_spool_exactly_as_in_memory(
    raw: bytes, options: ParseOptions, spill_over: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = spooled(tmp_path_factory.mktemp("spool"), raw)
    if raw:
        assert parse_file(path, options, spill_over=spill_over) == parse(raw, options)


def large_part(content_type: bytes, encoding: bytes, body: bytes) -> bytes:
    return (
        b"--XX\r\nContent-Type: " + content_type + b"\r\n"
        b"Content-Transfer-Encoding: " + encoding + b"\r\n\r\n" + body + b"\r\n"
    )


def large_parts_message() -> bytes:
    """A part of each kind the file decodes, and of each it hands back to `email`, all
    over SPILL_BYTES."""
    lines = 4 * SPILL_BYTES // 76
    clean = base64.encodebytes(bytes(range(256)) * (lines // 4)).replace(b"\n", b"\r\n")
    inner = (
        b"Subject: inner\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        + "Grüße\r\n".encode() * 4 * lines
    )
    return (
        b'Subject: large parts\r\nContent-Type: multipart/mixed; boundary="XX"\r\n\r\n'
        + large_part(b"text/plain; charset=iso-8859-1", b"8bit", b"caf\xe9 au lait\r\n" * 2 * lines)
        + large_part(
            b"text/html; charset=utf-8", b"quoted-printable", b"<p>=C3=A9t=C3=A9=\r\n" * 2 * lines
        )
        + large_part(b"application/pdf", b"base64", clean)
        + large_part(b"image/png", b"base64", clean[:-3] + b"!!" + clean[-3:])  # email decodes it
        + large_part(b"application/zip", b"x-uuencode", b"begin 644 a\r\n" + b"M" * 61 * lines)
        + large_part(b"message/rfc822", b"8bit", inner)
        + b"--XX--\r\n"
    )


def test_large_parts_give_the_same_event_from_the_spool_as_in_memory(tmp_path: Path) -> None:
    raw = large_parts_message()
    path = spooled(tmp_path, raw)
    assert stand_ins_landed(raw, ParseOptions(), SPILL_BYTES) == 6
    assert parse_file(path) == parse(raw)
    came = arrival()
    in_memory = asyncio.run(BUILDER.build(came, raw))
    from_spool = asyncio.run(BUILDER.build(came, MessageContent(size=len(raw), path=path)))
    assert len(in_memory.attachments) == 4
    assert from_spool.to_json() == in_memory.to_json()


@pytest.mark.parametrize("charset", [b"utf-8", b"UTF8", b"us-ascii", b"iso-8859-1", b"x-unknown"])
def test_a_text_decoded_in_pieces_is_the_text_decoded_whole(tmp_path: Path, charset: bytes) -> None:
    """Invalid and cut UTF-8 sequences, lone CRs and CRLFs on every side of the megabyte
    marks where the pieces end give the same text and the same errors."""
    line = "Grüße, 世界! 🙂 ".encode() * 7
    odd = [b"\xff", b"\xe4\xb8", b"\xc3", b"\r", b"\r\r\n", b"\x80\x80", b"\xf0\x9f\x99"]
    body = b"".join(line + odd[n % len(odd)] + b"\r\n" for n in range(3 * MIB // len(line)))
    raw = (
        b"Content-Type: text/plain; charset=" + charset + b"\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" + body
    )
    result = parse_file(spooled(tmp_path, raw))
    assert result == parse(raw)
    assert len(result.body) > MIB


def attachment_message(size: int) -> bytes:
    content = bytes(range(256)) * (size // 256)
    return (
        b"From: a@example.com\r\nTo: b@example.com\r\nSubject: big\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="XX"\r\n\r\n'
        b"--XX\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        b"--XX\r\nContent-Type: application/pdf\r\n"
        b'Content-Disposition: attachment; filename="big.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(content).replace(b"\n", b"\r\n")
        + b"--XX--\r\n"
    )


def text_message(size: int) -> bytes:
    line = ("Привет, мир! Große Straße. " * 3).encode("utf-8") + b"\r\n"
    return (
        b"From: a@example.com\r\nTo: b@example.com\r\nSubject: text\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + line
        * (size // len(line))
    )


@pytest.fixture
def traced() -> Iterator[None]:
    tracemalloc.start()
    yield
    tracemalloc.stop()


def peak_of_parse(path: Path, spill_over: int = SPILL_BYTES) -> tuple[int, ParsedMessage]:
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    result = parse_file(path, spill_over=spill_over)
    return tracemalloc.get_traced_memory()[1] - before, result


@pytest.mark.usefixtures("traced")
def test_a_10_mb_attachment_costs_about_its_size(tmp_path: Path) -> None:
    """Fed whole, the parser held 3.8 times the attachment at its peak; read from the file,
    about 1.05 times (the decoded bytes the event needs)."""
    path = spooled(tmp_path, attachment_message(10 * MIB))
    streamed, result = peak_of_parse(path)
    assert [part.size for part in result.attachments] == [10 * MIB // 256 * 256]
    assert streamed < 1.5 * 10 * MIB
    fed, fed_result = peak_of_parse(path, spill_over=len(path.read_bytes()))
    assert fed_result == result
    assert fed > 3 * 10 * MIB  # what the file spares


@pytest.mark.usefixtures("traced")
def test_a_6_mb_8bit_text_part_costs_far_less_than_fed(tmp_path: Path) -> None:
    """Fed whole, 7.3 times the part's octets at the peak; read from the file and decoded a
    megabyte at a time, 2.4 (the pieces of text and the text they are joined into)."""
    path = spooled(tmp_path, text_message(6 * MIB))
    streamed, result = peak_of_parse(path)
    assert result.body.startswith("Привет, мир!")
    assert "\r" not in result.body
    assert streamed < 3 * 6 * MIB
    fed, fed_result = peak_of_parse(path, spill_over=len(path.read_bytes()))
    assert fed_result == result
    assert fed > 6 * 6 * MIB
