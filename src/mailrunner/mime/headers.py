"""Header and text decoding that takes time linear in its input and never raises.

`email.header.decode_header` finds encoded words with a lazy regex that rescans the rest
of the header from every `=?` (seconds for half a megabyte) and raises on a bad base64
word, losing the whole message; `bytes.decode` raises for a charset that is no charset
(`zlib`, `base64`, `undefined`) and `punycode` decodes in quadratic time. Here encoded words
are found with plain string searches, and every charset a sender names is checked once:
one that is unknown or not a character set decodes as UTF-8, and `parse_errors` says so.
"""

from __future__ import annotations

import binascii
import codecs
import functools
import re
from collections.abc import Iterator
from typing import NamedTuple

_FALLBACK_CHARSET = "utf-8"
"""What text in an unusable charset is decoded as: the charset of nearly all 8-bit mail."""
_NOT_CHARSETS = frozenset({"undefined", "punycode", "idna", "unicode-escape", "raw-unicode-escape"})
"""Text codecs (by `codecs.lookup` name) that are no character set: `undefined` refuses all
bytes, `punycode` decodes in quadratic time, `idna` refuses most text, the escape codecs
interpret backslashes."""
_CHARSET_SHOWN = 40
"""How much of an unusable charset name `parse_errors` repeats."""
_ENCODINGS = ("q", "Q", "b", "B")
_Q_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")
"""Quoted-printable's `=XX`, as `email.quoprimime.header_decode` reads it."""
_OCTETS = {
    f"{high}{low}".encode(): bytes.fromhex(f"{high}{low}")
    for high in "0123456789abcdefABCDEF"
    for low in "0123456789abcdefABCDEF"
}
"""The octet each two hex digits of `=XX` stand for, in either case."""
_BEYOND_OCTETS = re.compile(r"([^\x00-\xff]+)")
_PROBLEMS_KEPT = 10
"""A header of thousands of broken encoded words adds this many `parse_errors`, not
thousands."""


def decode_bytes(data: bytes, charset: str, errors: list[str], where: str) -> str:
    """Decode by the declared charset, bytes it cannot decode as U+FFFD; a charset that is
    unknown, empty or no character set decodes as UTF-8 (recorded in `errors`)."""
    codec = _codec(charset, errors, where)
    try:
        return data.decode(codec)
    except UnicodeError:
        errors.append(f"{where}: bytes not valid in charset {codec!r}, replaced with U+FFFD")
    return data.decode(codec, errors="replace")


def decode_octets(text: str, charset: str, errors: list[str], where: str) -> str:
    """Decode an RFC 2231 value, whose characters below 256 stand for the octets it
    %-encoded, by its charset. Others are what compat32 made of raw 8-bit bytes in the
    header (U+FFFD, the bytes lost): they are kept, and recorded."""
    runs = _BEYOND_OCTETS.split(text)
    if len(runs) > 1:
        errors.append(f"{where}: 8-bit bytes outside the %-encoding, replaced with U+FFFD")
    return "".join(
        run if index % 2 else decode_bytes(run.encode("latin-1"), charset, errors, where)
        for index, run in enumerate(runs)
    )


def _codec(charset: str, errors: list[str], where: str) -> str:
    """The codec to decode `charset` with: one that turns bytes into text. Declared ASCII
    (by any of its names) carries 8-bit bytes in practice, and they are UTF-8."""
    codec = _text_codec(charset.strip().strip('"').lower())
    if codec is None:
        errors.append(
            f"{where}: charset {charset[:_CHARSET_SHOWN]!r} is unknown or not a text charset,"
            " decoded as UTF-8"
        )
        return _FALLBACK_CHARSET
    return _FALLBACK_CHARSET if codec == "ascii" else codec


@functools.lru_cache(maxsize=64)
def _text_codec(name: str) -> str | None:
    """The canonical name of the codec `name` finds, if it is a character set."""
    try:
        codec = codecs.lookup(name).name
        b"a".decode(codec, "replace")  # LookupError: bytes-to-bytes (zlib, hex, base64)
    except (LookupError, ValueError):  # ValueError: a NUL or a lone surrogate in the name
        return None
    return None if codec in _NOT_CHARSETS else codec


def unfold(text: str) -> str:
    """A header value on one line: RFC 5322 unfolding removes the line breaks only, and a
    bare CR or LF (never valid in a header) goes too."""
    if "\n" in text or "\r" in text:
        return text.replace("\r", "").replace("\n", "")
    return text


def decode_encoded_words(text: str, errors: list[str], where: str) -> str:
    """The text of an unfolded header with its RFC 2047 encoded words decoded.

    The same text as `email.header.decode_header` and joining its chunks, for any header
    it accepts, with three differences where it is wrong: plain text stays as written
    (it passes it through `raw-unicode-escape`, which turns a written `\\u00e9` into `é`),
    non-ASCII inside an encoded word is taken as UTF-8, and a base64 word that does not
    decode stays as written (recorded in `errors`) instead of failing the whole header.
    Of the problems one header has, `errors` gets the first few.
    """
    if _next_word(text, 0) is None:
        return text
    problems: list[str] = []
    chunks: list[tuple[list[str] | bytearray, str | None]] = []
    for piece in _drop_space_between_encoded(_pieces(text, problems, where)):
        _add_chunk(chunks, piece)
    decoded = "".join(
        "".join(chunk)
        if isinstance(chunk, list)
        else decode_bytes(bytes(chunk), charset or "", problems, where)
        for chunk, charset in chunks
    )
    errors.extend(list(dict.fromkeys(problems))[:_PROBLEMS_KEPT])
    return decoded


class _Piece(NamedTuple):
    """Plain text or one encoded word, as `decode_header` cuts a header."""

    text: str
    """Plain text; for an encoded word its text still encoded (RFC 2047's whitespace rule
    looks at it as `decode_header` does)."""
    data: bytes | None
    """An encoded word's bytes; None for plain text."""
    charset: str | None
    """An encoded word's charset, lower-cased."""
    starts_line: bool = False
    """First of a `str.splitlines` line (other than the first)."""


def _next_word(line: str, start: int) -> tuple[int, int, int] | None:
    """Where the next encoded word `=?charset?X?text?=` starts, where its charset ends and
    where its text ends: the leftmost match of `email.header.ecre`, found by string searches
    that never go back (each `=?` that fails is passed for good)."""
    begin = line.find("=?", start)
    while begin >= 0:
        marker = line.find("?", begin + 2)
        if marker < 0:
            return None
        if line[marker + 1 : marker + 2] in _ENCODINGS and line.startswith("?", marker + 2):
            end = line.find("?=", marker + 3)
            # without a closing `?=` here there is none for any later `=?` either
            return (begin, marker, end) if end >= 0 else None
        begin = line.find("=?", begin + 1)
    return None


def _pieces(text: str, problems: list[str], where: str) -> Iterator[_Piece]:
    """Plain text and decoded encoded words, line by line (`str.splitlines` lines, as
    `decode_header` reads them), the leading whitespace of each line dropped."""
    for number, line in enumerate(text.splitlines()):
        position = 0
        starts_line = number > 0
        while True:
            found = _next_word(line, position)
            plain = line[position : found[0] if found is not None else len(line)]
            if position == 0:
                plain = plain.lstrip()
            if plain:
                yield _Piece(plain, None, None, starts_line)
                starts_line = False
            if found is None:
                break
            yield _encoded_word(line, found, problems, where)._replace(starts_line=starts_line)
            starts_line = False
            position = found[2] + 2


def _encoded_word(
    line: str, found: tuple[int, int, int], problems: list[str], where: str
) -> _Piece:
    """The encoded word `_next_word` found, decoded to bytes; a base64 word that does not
    decode is plain text, as written."""
    begin, marker, end = found
    encoded = line[marker + 3 : end]
    charset = line[begin + 2 : marker].lower()
    if line[marker + 1] in "qQ":
        data = encoded.replace("_", " ").encode("utf-8", "surrogatepass")
        return _Piece(encoded, _Q_ESCAPE.sub(_unescape, data), charset)
    data = encoded.encode("ascii", "ignore")
    data += b"==="[: -len(data) % 4]
    try:
        return _Piece(encoded, binascii.a2b_base64(data), charset)
    except binascii.Error:
        problems.append(f"{where}: an encoded word is not valid base64, kept as written")
        return _Piece(line[begin : end + 2], None, None)


def _unescape(match: re.Match[bytes]) -> bytes:
    return _OCTETS[match[1]]


def _drop_space_between_encoded(pieces: Iterator[_Piece]) -> Iterator[_Piece]:
    """RFC 2047 section 6.2: whitespace between two encoded words is not displayed. Each
    piece is passed on when the next one is known; no more than two are held."""
    before: _Piece | None = None
    held: _Piece | None = None
    for piece in pieces:
        if held is not None and not (
            piece.data is not None
            and before is not None
            and before.data is not None
            and held.text.isspace()
        ):
            yield held
        before, held = held, piece
    if held is not None:
        yield held


def _add_chunk(chunks: list[tuple[list[str] | bytearray, str | None]], piece: _Piece) -> None:
    """Neighbouring encoded words in one charset are decoded together (a character may be
    split between two of them); plain texts on two lines are joined by a space."""
    last, last_charset = chunks[-1] if chunks else (None, None)
    if piece.data is None:
        if isinstance(last, list):
            last.append(" " + piece.text if piece.starts_line else piece.text)
        else:
            chunks.append(([piece.text], None))
    elif isinstance(last, bytearray) and last_charset == piece.charset:
        last += piece.data
    else:
        chunks.append((bytearray(piece.data), piece.charset))
