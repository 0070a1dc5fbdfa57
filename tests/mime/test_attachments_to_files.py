"""Attachments of a spooled message on their way to files (tempfile mode, claim-check) are
decoded from the spool file straight into their files (`stream.FileBody`), never whole in
memory: the files hold exactly the bytes the in-memory parse decodes, with the same parse
errors, whatever the transfer encoding and line length."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import random
import tracemalloc
from pathlib import Path

import pytest

from mailrunner.events import EmailEvent
from mailrunner.files import PRIVATE_FILE
from mailrunner.mime.attachments import TempfileStorage
from mailrunner.mime.parse import parse, parse_file
from mailrunner.mime.stream import SPILL_BYTES
from mailrunner.smtp.spool import MessageContent
from support.events import BUILDER, arrival

MIB = 1024 * 1024


def base64_lines(data: bytes, width: int) -> bytes:
    text = base64.b64encode(data)
    return b"".join(text[i : i + width] + b"\r\n" for i in range(0, len(text), width))


def part(content_type: bytes, encoding: bytes, body: bytes, name: bytes) -> bytes:
    return (
        b"--XX\r\nContent-Type: "
        + content_type
        + b"\r\nContent-Transfer-Encoding: "
        + encoding
        + b'\r\nContent-Disposition: attachment; filename="'
        + name
        + b'"\r\n\r\n'
        + body
    )


def message(*parts: bytes) -> bytes:
    return (
        b'Subject: files\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="XX"'
        b"\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        + b"".join(parts)
        + b"--XX--\r\n"
    )


def stored_from_spool(tmp_path: Path, raw: bytes) -> EmailEvent:
    path = tmp_path / "spooled.eml"
    path.write_bytes(raw)
    storage = TempfileStorage(tmp_path / "attachments", "p", file_mode=PRIVATE_FILE)
    builder = dataclasses.replace(BUILDER, storage=storage, include_raw=False)
    return asyncio.run(builder.build(arrival(), MessageContent(size=len(raw), path=path)))


def in_file(tmp_path: Path, raw: bytes) -> list[bool]:
    """Which attachments the parse left in the spool file (the others it decoded)."""
    path = tmp_path / "spooled.eml"
    path.write_bytes(raw)
    return [
        part.body is not None for part in parse_file(path, attachments_in_file=True).attachments
    ]


def assert_as_in_memory(tmp_path: Path, raw: bytes) -> EmailEvent:
    expected = parse(raw)
    event = stored_from_spool(tmp_path, raw)
    got = [
        (a.filename, a.content_type, a.size, Path(a.path or "").read_bytes())
        for a in event.attachments
    ]
    wanted = [(p.filename, p.content_type, p.size, p.content) for p in expected.attachments]
    assert got == wanted
    assert list(event.parse_errors) == expected.parse_errors
    return event


RANDOM = random.Random(7)
PIECE_EDGES = [SPILL_BYTES, 196_607, 196_608, 196_609, 600_001]
"""Decoded sizes over SPILL_BYTES (so spilled) around FileBody's 256 KiB of base64 a piece."""


@pytest.mark.parametrize("size", PIECE_EDGES)
@pytest.mark.parametrize("width", [1, 3, 5, 75, 76, 77, 998])
def test_clean_base64_of_any_line_width_is_decoded_into_the_file_exactly(
    tmp_path: Path, size: int, width: int
) -> None:
    data = RANDOM.randbytes(size)
    raw = message(part(b"application/octet-stream", b"base64", base64_lines(data, width), b"a.bin"))
    event = assert_as_in_memory(tmp_path, raw)
    assert Path(event.attachments[0].path or "").read_bytes() == data
    assert in_file(tmp_path, raw) == [True]


def test_padding_split_by_line_breaks_and_every_encoding_give_what_email_decodes(
    tmp_path: Path,
) -> None:
    data = RANDOM.randbytes(100_000)  # 100000 % 3 == 1: "==" at the end
    padded = base64_lines(data, 76).rstrip(b"\r\n")
    split_padding = padded[:-1] + b"\r\n=\r\n\r\n"
    flawed = base64_lines(data, 76)[:-10] + b"!!" + base64_lines(data, 76)[-10:]
    octets = bytes(range(256)) * 400 + b"\n"
    raw = message(
        part(b"application/octet-stream", b"base64", split_padding, b"split.bin"),
        part(b"image/png", b"base64", flawed, b"flawed.png"),  # email decodes it
        part(b"application/octet-stream", b"8bit", octets.replace(b"\n", b"\r\n"), b"o.bin"),
        part(b"application/octet-stream", b"binary", b"\x00\x01" * 50_000 + b"\r\n", b"b.bin"),
        part(b"text/csv", b"quoted-printable", b"a=3Db,=C3=A9=\r\n" * 9_000, b"q.csv"),
        part(
            b"application/zip",
            b"x-uuencode",
            b"begin 644 a\r\n" + b"M" * 61 * 2_000 + b"\r\n",
            b"u",
        ),
        part(b"text/plain", b"7bit", b"plain attached text line\r\n" * 4_000, b"t.txt"),
    )
    assert_as_in_memory(tmp_path, raw)
    assert in_file(tmp_path, raw) == [True, False, True, True, False, False, True]


def test_an_attachment_stored_from_the_spool_costs_a_fraction_of_its_size(tmp_path: Path) -> None:
    """Parsed and stored whole, a 10 MiB attachment peaked at 10.3 MB (its decoded bytes);
    decoded into its file a piece at a time, about 2 MB (the parse's own)."""
    data = RANDOM.randbytes(10 * MIB)
    raw = message(part(b"application/pdf", b"base64", base64_lines(data, 76), b"big.pdf"))
    path = tmp_path / "spooled.eml"
    path.write_bytes(raw)
    del raw
    storage = TempfileStorage(tmp_path / "attachments", "p", file_mode=PRIVATE_FILE)
    builder = dataclasses.replace(BUILDER, storage=storage, include_raw=False)
    content = MessageContent(size=path.stat().st_size, path=path)
    tracemalloc.start()
    try:
        event = asyncio.run(builder.build(arrival(), content))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert Path(event.attachments[0].path or "").read_bytes() == data
    assert peak < 0.4 * 10 * MIB, f"parse and store peaked at {peak / MIB:.1f} MiB"
    assert parse_file(path, attachments_in_file=True).attachments[0].content == b""
