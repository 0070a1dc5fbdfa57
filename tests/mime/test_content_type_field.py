"""The pre-scan reads a part's Content-Type field without `email`'s feed when the field is
plain ASCII (`prescan._field_alone`): it must hold exactly what `BytesHeaderParser` builds
from the same bytes, since the walk's boundaries decide what the parser is fed."""

from __future__ import annotations

from email.parser import BytesHeaderParser

from hypothesis import given, settings
from hypothesis import strategies as st

from mailrunner.mime.part import PARSER_POLICY, MimePart
from mailrunner.mime.prescan import _field_alone

pieces = st.sampled_from(
    [
        b"text/plain",
        b"multipart/mixed",
        b"Multipart/Alternative",
        b"message/rfc822",
        b"text",
        b"/",
        b";",
        b" ",
        b"\t",
        b"=",
        b'"',
        b"\\",
        b"'",
        b"*",
        b"*0",
        b"%41",
        b"(c)",
        b"boundary",
        b"BOUNDARY",
        b"charset",
        b"utf-8''",
        b"----=_Part_1.2",
        b"\r\n",
        b"\n",
        b"\r",
        b"\r\n\t",
        b"\r\n ",
        b"\n ",
        b"\x0b",
        b"\x00",
        b"\xe9",
        b"=?utf-8?q?x?=",
    ]
)


def seen(part: MimePart, default_type: str) -> tuple[object, ...]:
    part.set_default_type(default_type)
    content_type = part.get_content_type()
    return (
        part.items(),
        content_type,
        part.get_boundary(),
        part.get_params(),
        part.get_param("boundary", unquote=False),
    )


def parsed(field: bytes) -> MimePart:
    part = BytesHeaderParser(policy=PARSER_POLICY).parsebytes(field)
    assert isinstance(part, MimePart)
    return part


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from([b"Content-Type:", b"content-type:", b"CONTENT-TYPE:"]),
    st.lists(pieces, max_size=14),
    st.sampled_from([b"", b"\r\n", b"\n"]),
    st.sampled_from(["text/plain", "message/rfc822"]),
)
def test_a_field_reads_as_the_parser_reads_it(
    name: bytes, value: list[bytes], end: bytes, default_type: str
) -> None:
    field = name + b"".join(value) + end
    assert seen(_field_alone(field), default_type) == seen(parsed(field), default_type)


def test_a_folded_multipart_field_gives_its_boundary() -> None:
    field = b'Content-Type: multipart/mixed;\r\n\tboundary="----=_Part_0_1.2"\r\n'
    part = _field_alone(field)
    assert (part.get_content_type(), part.get_boundary()) == ("multipart/mixed", "----=_Part_0_1.2")
    assert seen(part, "text/plain") == seen(parsed(field), "text/plain")
