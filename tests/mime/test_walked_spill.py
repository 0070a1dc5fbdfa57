"""Once a MIME message in memory is walked (a body over `IN_MEMORY_SPILL_BYTES`), its bodies
over `WALKED_SPILL_BYTES` are read from its bytes too, with the same result as feeding them."""

from __future__ import annotations

import base64
import quopri
from unittest import mock

from mailrunner.mime import parse as parse_module
from mailrunner.mime.parse import WALKED_SPILL_BYTES, parse


def test_a_2_kb_quoted_printable_part_beside_a_large_attachment_is_a_stand_in() -> None:
    text = ("The figures for this quarter are in the attached report. \u00e9 " * 32).encode()
    body = quopri.encodestring(text).replace(b"\n", b"\r\n")
    pdf = bytes(range(256)) * 300
    raw = (
        b'Subject: report\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + body + b"\r\n"
        b"--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(pdf).replace(b"\n", b"\r\n")
        + b"--b--\r\n"
    )
    assert parse_module.IN_MEMORY_SPILL_BYTES is not None
    assert WALKED_SPILL_BYTES < len(body) < parse_module.IN_MEMORY_SPILL_BYTES
    with mock.patch.object(
        parse_module, "parse_in_chunks", wraps=parse_module.parse_in_chunks
    ) as feed:
        result = parse(raw)
    (call,) = feed.call_args_list
    assert len(call.kwargs["stand_ins"]) == 2, "the text part was fed"
    with mock.patch.object(parse_module, "IN_MEMORY_SPILL_BYTES", None):
        assert result == parse(raw)
    assert result.body == text.decode().replace("\r\n", "\n")
    assert result.attachments[0].content == pdf
