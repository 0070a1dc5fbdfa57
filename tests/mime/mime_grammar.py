"""A hypothesis grammar of DATA as senders produce it, well-formed or not.

Messages nest multiparts, embedded messages and delivery reports; leaves come in every
transfer encoding (base64, quoted-printable, 7bit, 8bit, binary, unknown) and in charsets
Python knows, does not know, or knows as non-text codecs; headers fold, carry encoded words
and raw 8-bit bytes; boundaries are quoted, RFC 2231-encoded, missing, undecodable, reused
by an inner part or never used; and any message may be cut short or have garbage spliced in.
"""

from __future__ import annotations

import base64
import quopri

from hypothesis import strategies as st

CHARSETS = [
    "utf-8",
    "us-ascii",
    "iso-8859-1",
    "koi8-r",
    "shift_jis",
    "utf-16",
    "x-unknown",
    "",
    "undefined",
    "idna",
    "base64",
    "zlib",
    "rot13",
    "hex",
    "a" * 200,
]
WORDS = [b"hello", b"=?", b"?=", b"<a@b>", b'"', b"(", b")", b";", b":", b"\\", b"--", b"\xc3\xa9"]
LEAF_TYPES = [
    b"text/plain",
    b"text/html",
    b"application/octet-stream",
    b"image/png",
    b"text",
    b"",
    b"multipart/mixed",
]
MULTIPART_TYPES = [b"mixed", b"alternative", b"related", b"digest", b"report", b"signed"]
ENCODINGS = [b"base64", b"quoted-printable", b"7bit", b"8bit", b"binary", b"x-uuencode"]
BOUNDARIES = [b"b", b"=_Part_0_1", b"a b", b"a:b", b"--x", b"x" * 70, b"\xff8bit"]


def line_ends() -> st.SearchStrategy[bytes]:
    return st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r"])


@st.composite
def header_values(draw: st.DrawFn, eol: bytes) -> bytes:
    """Words, encoded words in any charset, 8-bit bytes, folded with space or tab."""
    pieces: list[bytes] = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["word", "encoded", "noise"]))
        if kind == "word":
            pieces.append(draw(st.sampled_from(WORDS)))
        elif kind == "encoded":
            charset = draw(st.sampled_from(CHARSETS)).encode()
            text = draw(st.binary(max_size=12))
            pieces.append(b"=?" + charset + b"?B?" + base64.b64encode(text) + b"?=")
        else:
            pieces.append(draw(st.binary(max_size=8)).replace(b"\r", b"").replace(b"\n", b""))
    folds = [draw(st.sampled_from([b" ", b"\t", eol + b" ", eol + b"\t"])) for _ in pieces]
    return b"".join(fold + piece for fold, piece in zip(folds, pieces, strict=True))


def field(name: bytes, value: bytes, eol: bytes) -> bytes:
    return name + b":" + value + eol


@st.composite
def charset_params(draw: st.DrawFn) -> bytes:
    if not draw(st.booleans()):
        return b""
    return b'; charset="' + draw(st.sampled_from(CHARSETS)).encode() + b'"'


@st.composite
def dispositions(draw: st.DrawFn, eol: bytes) -> bytes:
    kind = draw(st.sampled_from([b"", b"inline", b"attachment", b"ATTACHMENT"]))
    if not kind:
        return b""
    name = draw(st.sampled_from([b"", b"a.txt", "名前.txt".encode()]))
    forms = [
        b"",
        b'; filename="' + name + b'"',
        b"; filename*=" + draw(st.sampled_from(CHARSETS)).encode() + b"''%E5%90%8D%FF",
        b"; filename*0=a; filename*1=b; filename*=c",
    ]
    return field(b"Content-Disposition", b" " + kind + draw(st.sampled_from(forms)), eol)


@st.composite
def leaf_bodies(draw: st.DrawFn, encoding: bytes, eol: bytes) -> bytes:
    data = draw(st.binary(max_size=120))
    if encoding == b"base64":
        body = base64.encodebytes(data)
        if draw(st.booleans()):
            body = body[: draw(st.integers(0, len(body)))] + draw(
                st.sampled_from([b"!", b"=", b""])
            )
    elif encoding == b"quoted-printable":
        body = quopri.encodestring(data) + draw(st.sampled_from([b"", b"=", b"=Z", b"=\n"]))
    elif encoding == b"7bit":
        body = bytes(byte & 0x7F for byte in data)
    else:
        body = data
    return body.replace(b"\r\n", b"\n").replace(b"\n", eol)


@st.composite
def leaves(draw: st.DrawFn, eol: bytes) -> bytes:
    content_type = draw(st.sampled_from(LEAF_TYPES))
    encoding = draw(st.sampled_from(ENCODINGS))
    headers = b""
    if content_type or draw(st.booleans()):
        headers += field(b"Content-Type", b" " + content_type + draw(charset_params()), eol)
    headers += field(b"Content-Transfer-Encoding", b" " + encoding, eol)
    headers += draw(dispositions(eol))
    return headers + eol + draw(leaf_bodies(encoding, eol))


@st.composite
def boundary_params(draw: st.DrawFn, boundary: bytes) -> bytes:
    quoted = b'"' + boundary + b'"'
    return draw(
        st.sampled_from(
            [
                b"; boundary=" + quoted,
                b"; boundary=" + quoted,
                b"; boundary=" + boundary,
                b"; boundary*=utf-8''" + boundary.replace(b" ", b"%20"),
                b"; boundary*0=" + quoted[:2] + b'"; boundary*1="' + boundary[1:] + b'"',
                b"; boundary*=idna''%FF",
                b"; boundary*=x; boundary*0=y",
                b"",
            ]
        )
    )


@st.composite
def multiparts(draw: st.DrawFn, eol: bytes, depth: int) -> bytes:
    boundary = draw(st.sampled_from(BOUNDARIES))
    used = boundary if draw(st.integers(0, 9)) else draw(st.sampled_from(BOUNDARIES))
    subtype = draw(st.sampled_from(MULTIPART_TYPES))
    headers = field(
        b"Content-Type", b" multipart/" + subtype + draw(boundary_params(boundary)), eol
    )
    body = draw(st.sampled_from([b"", b"preamble" + eol, eol]))
    for _ in range(draw(st.integers(0, 3))):
        padding = draw(st.sampled_from([b"", b" ", b"\t "]))
        body += b"--" + used + padding + eol + draw(entities(eol, depth - 1)) + eol
    if draw(st.integers(0, 4)):
        body += b"--" + used + b"--" + eol
    body += draw(st.sampled_from([b"", b"epilogue" + eol]))
    return headers + eol + body


@st.composite
def embedded(draw: st.DrawFn, eol: bytes, depth: int) -> bytes:
    headers = field(b"Content-Type", b" message/rfc822", eol) + draw(dispositions(eol))
    inner = field(b"Subject", draw(header_values(eol)), eol)
    return headers + eol + inner + draw(entities(eol, depth - 1))


@st.composite
def delivery_statuses(draw: st.DrawFn, eol: bytes) -> bytes:
    blocks = [
        field(b"Reporting-MTA", b" dns; mx.example", eol) * draw(st.integers(0, 2))
        for _ in range(draw(st.integers(0, 3)))
    ]
    return field(b"Content-Type", b" message/delivery-status", eol) + eol + eol.join(blocks)


def entities(eol: bytes, depth: int) -> st.SearchStrategy[bytes]:
    """One MIME entity: its headers, a blank line, its body."""
    if depth <= 0:
        return leaves(eol)
    return st.one_of(
        leaves(eol),
        multiparts(eol, depth),
        embedded(eol, depth),
        delivery_statuses(eol),
    )


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    """A whole DATA payload: top-level headers and one entity, sometimes damaged."""
    eol = draw(line_ends())
    top = b"".join(
        field(name, draw(header_values(eol)), eol)
        for name in draw(
            st.lists(st.sampled_from([b"From", b"To", b"Cc", b"Subject", b"Message-ID"]))
        )
    )
    raw = top + draw(entities(eol, depth=draw(st.integers(0, 4))))
    damage = draw(st.sampled_from(["none", "none", "cut", "splice"]))
    if damage == "cut":
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif damage == "splice":
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.binary(min_size=1, max_size=40)) + raw[at:]
    return raw
