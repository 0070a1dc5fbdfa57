"""Parse a spooled message without its large bodies ever becoming text in the parser.

`email`'s feed parser keeps every line of a body in a list and joins them into one string
at the end of the part, then decoding copies it twice more: a 10 MB attachment cost near
four times its size, a 6 MB 8-bit text seven. For a message mapped from the spool, the
pre-scan's walk already knows where each leaf body starts and ends, so a body over
`SPILL_BYTES` is not fed: one short stand-in line takes its place (its own line end kept,
so the parser strips the line end before a boundary exactly as it would have), and the
part it lands in is given the body's place in the file instead. Decoding then reads the
mapped pages (`binascii` decodes base64 and quoted-printable from a view of them, without
a copy of the text): an attachment costs its decoded size, a text body its octets and the
decoder's buffer for its text.

An attachment on its way to a file (tempfile mode, or a claim-checked message) need not be
decoded here at all: `SpilledBody.in_file` says where its bytes lie in the spool file, and
the storage decodes them from there a piece at a time into the attachment's file
(`FileBody`), so the attachment is never whole in memory.

The stand-ins carry a random nonce, and each must come back as a whole leaf payload: if
the parser and the walk ever disagreed, `StandIns.attach` says so and the message is parsed
again the ordinary way, so the result is always the parser's own.
"""

from __future__ import annotations

import binascii
import codecs
import mmap
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

from mailrunner.mime.part import MimePart
from mailrunner.mime.prescan import FeedPlan, _Child, _Scan, walk

SPILL_BYTES = 64 * 1024
"""Leaf bodies of a spooled message longer than this are read from the file, not fed to
the parser: below it, the parser's copies cost less than the extra bookkeeping."""
CLEAN_BASE64 = r"[A-Za-z0-9+/\r\n]*(?:=[\r\n]*){0,2}"
"""A base64 body `a2b_base64` decodes exactly as `email` does, with nothing to report (when
its characters other than line breaks are a multiple of four)."""
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_COUNT_CHUNK = 1024 * 1024
_FILE_PIECE = 256 * 1024
"""Encoded bytes `FileBody` reads and decodes at a time."""
_PADDING_AND_BREAKS = b"=\r\n"
_TEXT_PIECE = 1024 * 1024
_DECODED_AS_UTF8 = frozenset({"utf-8", "ascii"})
"""Charsets (as `codecs.lookup` names them) whose text `headers.decode_bytes` decodes as
UTF-8: decoded line by line, they give the same text and the same errors, since a line feed
is never part of a character nor of an invalid sequence's replacement."""
_LEFT_TO_EMAIL = frozenset({"base64", "x-uuencode", "uuencode", "uue", "x-uue"})
"""Transfer encodings of a spilled body `email` decodes from its text (base64 only when it
is not clean: its defects are `email`'s to find)."""


@dataclass(frozen=True, slots=True)
class SpilledBody:
    """A leaf body left in the mapped message: `raw[start:end]` is exactly the payload the
    parser would have built (as bytes, where the parser has surrogate escapes)."""

    raw: bytes
    start: int
    end: int

    def text(self) -> str:
        """The payload as the parser would have stored it."""
        return self._octets().decode("ascii", "surrogateescape")

    def clean_base64(self) -> bytes | None:
        """`parse.clean_base64` of the payload, read from the mapped pages."""
        if self._clean_base64_characters() is None:
            return None
        with memoryview(self.raw) as whole, whole[self.start : self.end] as view:
            return binascii.a2b_base64(view)

    def in_file(self, path: Path, transfer_encoding: str) -> FileBody | None:
        """The body as `FileBody` in the spool file at `path` (the file `raw` maps), when it
        is what `clean_base64` or `decoded` return: clean base64, or octets as they are;
        None for one `email` or quoted-printable decodes."""
        if transfer_encoding == "base64":
            characters = self._clean_base64_characters()
            if characters is None:
                return None
            size = characters // 4 * 3 - self._padding()
            return FileBody(path, self.start, self.end, base64=True, size=size)
        if transfer_encoding in _LEFT_TO_EMAIL or transfer_encoding == "quoted-printable":
            return None
        return FileBody(path, self.start, self.end, base64=False, size=self.end - self.start)

    def _clean_base64_characters(self) -> int | None:
        """How many base64 characters (padding included) a clean base64 body holds; None
        when it is not clean. The test is `CLEAN_BASE64`'s: only the alphabet and line
        breaks, then at most two `=` with only line breaks after the first. `translate`
        drops the alphabet in one pass in C and leaves a few octets a line to look at (100 KB
        of base64: 55 us; the regex and two counts of line breaks took 200 us)."""
        characters = padding = 0
        for piece in self._pieces(self.start):
            left = piece.translate(None, _BASE64_ALPHABET)
            if left.translate(None, _PADDING_AND_BREAKS):
                return None
            padding += left.count(b"=")
            characters += len(piece) - len(left)
        if padding > 2:
            return None
        if padding:
            first = self.raw.find(b"=", self.start, self.end)
            if any(piece.translate(None, _PADDING_AND_BREAKS) for piece in self._pieces(first)):
                return None
        characters += padding
        return None if characters % 4 else characters

    def _padding(self) -> int:
        """The `=` a clean base64 body ends with (line breaks may stand between them)."""
        padding = 0
        position = self.end
        while position > self.start and self.raw[position - 1] in _PADDING_AND_BREAKS:
            position -= 1
            padding += self.raw[position] == ord("=")
        return padding

    def decoded(self, transfer_encoding: str) -> bytes | None:
        """`get_payload(decode=True)` for a transfer encoding `email` decodes by `binascii`
        or not at all (the octets); None for one left to `email`."""
        if transfer_encoding in _LEFT_TO_EMAIL:
            return None
        if transfer_encoding == "quoted-printable":  # quopri.decodestring is a2b_qp
            with memoryview(self.raw) as whole, whole[self.start : self.end] as view:
                return binascii.a2b_qp(view)
        return self._octets()

    def text_pieces(self, transfer_encoding: str, charset: str) -> Iterator[bytes] | None:
        """The payload's octets in pieces of about `_TEXT_PIECE`, each ending after a line
        feed, when they are what `decoded` returns and `charset` is read as UTF-8 (a text
        decoded whole overallocates: two bytes a character for all the octets); else None."""
        if transfer_encoding in _LEFT_TO_EMAIL or transfer_encoding == "quoted-printable":
            return None
        try:
            codec = codecs.lookup(charset.strip().strip('"').lower()).name
        except (LookupError, ValueError):
            return None
        return self._line_pieces() if codec in _DECODED_AS_UTF8 else None

    def _line_pieces(self) -> Iterator[bytes]:
        start = self.start
        while start < self.end:
            cut = self.raw.find(b"\n", min(start + _TEXT_PIECE, self.end) - 1, self.end)
            end = self.end if cut < 0 else cut + 1
            yield self.raw[start:end]
            start = end

    def _octets(self) -> bytes:
        with memoryview(self.raw) as whole, whole[self.start : self.end] as view:
            return bytes(view)

    def _pieces(self, start: int) -> Iterator[bytes]:
        """The payload from `start` on, a copy of at most `_COUNT_CHUNK` octets at a time."""
        for offset in range(start, self.end, _COUNT_CHUNK):
            yield self.raw[offset : min(offset + _COUNT_CHUNK, self.end)]


@dataclass(frozen=True, slots=True)
class FileBody:
    """An attachment's body left in the spool file at `path`: `path[start:end]`, clean
    base64 or the octets themselves, `size` bytes once decoded. `pieces` decodes it a piece
    at a time, for the storage to write to the attachment's file."""

    path: Path
    start: int
    end: int
    base64: bool
    size: int

    def pieces(self) -> Iterator[bytes]:
        """The decoded bytes, about `_FILE_PIECE` at a time; blocking (file reads)."""
        with (
            self.path.open("rb") as file,
            mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped,
        ):
            carry = b""
            for start in range(self.start, self.end, _FILE_PIECE):
                piece = mapped[start : min(start + _FILE_PIECE, self.end)]
                if not self.base64:
                    yield piece
                    continue
                # whole groups of four characters decode alone exactly as within the body
                text = carry + piece.translate(None, b"\r\n")
                cut = len(text) - len(text) % 4
                carry = text[cut:]
                if cut:
                    yield binascii.a2b_base64(text[:cut])
            assert not carry, "a clean base64 body holds whole groups of four"

    def read(self) -> bytes:
        """The decoded bytes whole, for a storage that carries them in the event."""
        return b"".join(self.pieces())


class StandIns:
    """The bodies a feed leaves out, and the line fed in place of each."""

    def __init__(self, raw: bytes, bodies: list[tuple[int, int]]) -> None:
        prefix = b"\x00mailrunner-spilled-" + secrets.token_hex(8).encode("ascii")
        self.raw = raw
        self.feed: list[tuple[int, int, bytes]] = []
        """(start, end, line): feed `line` instead of `raw[start:end]`, in message order."""
        self._bodies: dict[str, tuple[int, int, int]] = {}
        for number, (start, end) in enumerate(bodies):
            token = prefix + b"-%d\x00" % number
            line_end = _line_end_of(raw, start, end)
            self.feed.append((start, end, token + line_end))
            self._bodies[token.decode("ascii")] = (start, end, len(line_end))

    def attach(self, message: Message) -> bool:
        """Give every part a stand-in landed in its body; False unless each stand-in came
        back as exactly one leaf's whole payload (with or without its line end)."""
        found: set[str] = set()
        for part in _every_part(message):
            payload = vars(part).get("_payload")
            token = payload.rstrip("\r\n") if isinstance(payload, str) else ""
            place = self._bodies.get(token)
            if place is None or payload is None:
                continue  # a body that was fed (a sender may write a stand-in's prefix)
            start, end, line_end = place
            if not isinstance(part, MimePart) or len(payload) - len(token) not in (0, line_end):
                return False
            stripped = len(payload) == len(token)
            part.spilled = SpilledBody(self.raw, start, end - line_end if stripped else end)
            found.add(token)
        return len(found) == len(self._bodies)


def restore(message: Message) -> None:
    """Give every spilled body in `message` back its text, for what reads the parts as
    `email` built them (an attached message is written out whole)."""
    for part in _every_part(message):
        if isinstance(part, MimePart) and part.spilled is not None:
            part.set_payload(part.spilled.text())
            part.spilled = None


def _every_part(message: Message) -> Iterator[Message]:
    """`message` and every part below it, without recursion (depth is the sender's)."""
    stack = [message]
    while stack:
        part = stack.pop()
        yield part
        payload = vars(part).get("_payload")
        if isinstance(payload, list):
            stack.extend(child for child in payload if isinstance(child, Message))


def _line_end_of(raw: bytes, start: int, end: int) -> bytes:
    """The line break `raw[start:end]` ends with (none at the end of the message)."""
    last = raw[max(start, end - 2) : end]
    if last.endswith(b"\r\n"):
        return b"\r\n"
    return last[-1:] if last[-1:] in (b"\r", b"\n") else b""


class _BodyScan(_Scan):
    """The pre-scan's walk, noting where each leaf body it steps over starts and ends."""

    __slots__ = ("_blocks", "bodies")

    def __init__(self, raw: bytes, *, max_depth: int, max_header_bytes: int) -> None:
        super().__init__(raw, max_depth=max_depth, max_header_bytes=max_header_bytes)
        self._blocks: list[tuple[bool, int]] = []
        self.bodies: list[tuple[int, int]] = []

    def entity(self, child: _Child) -> Iterator[_Child]:
        block = len(self._blocks)
        yield from super().entity(child)
        is_leaf, body_start = self._blocks[block]
        if is_leaf:
            self.bodies.append((body_start, self.pos))

    def _header_block(self, default_type: str) -> tuple[str, bytes | None]:
        content_type, boundary = super()._header_block(default_type)
        is_leaf = boundary is None and not content_type.startswith(("message/", "multipart/"))
        self._blocks.append((is_leaf, self.pos))
        return content_type, boundary


def plan_stream(
    raw: bytes, *, max_parts: int, max_depth: int, max_header_bytes: int, spill_over: int
) -> tuple[FeedPlan, StandIns]:
    """`prescan.plan_feed`, and stand-ins for the leaf bodies over `spill_over` bytes that
    lie inside one fed span (never at its start, where feeding joins the spans)."""
    scan = _BodyScan(raw, max_depth=max_depth, max_header_bytes=max_header_bytes)
    plan = walk(scan, max_parts)
    bodies = [
        (start, end)
        for start, end in scan.bodies
        if end - start > spill_over and any(low < start and end <= high for low, high in plan.spans)
    ]
    return plan, StandIns(raw, bodies)
