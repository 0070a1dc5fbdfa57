"""Turn the bytes of one message into the facts an EMAIL_RECEIVED event carries.

The parser is built on the standard library's `compat32` policy: it is about twenty times
cheaper than `policy.default` per message, which matters on the SMTP -> Jobs hot path, and
its lazier decoding lets us catch every failure per part instead of losing the whole message.
Nothing here raises: whatever goes wrong is recorded in `parse_errors` and the rest is kept.
"""

from __future__ import annotations

import binascii
import io
import mmap
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from email.feedparser import BytesFeedParser
from email.message import Message
from email.policy import compat32
from email.utils import collapse_rfc2231_value
from pathlib import Path
from typing import cast

from mailrunner.events import Address
from mailrunner.mime.addresses import split_addresses
from mailrunner.mime.headers import decode_bytes, decode_encoded_words, decode_octets, unfold
from mailrunner.mime.part import FEED_CHUNK, PARSER_POLICY, MimePart, feed_range
from mailrunner.mime.plain import plain_message
from mailrunner.mime.prescan import FeedPlan, plan_feed, within_every_limit
from mailrunner.mime.stream import (
    CLEAN_BASE64,
    SPILL_BYTES,
    FileBody,
    SpilledBody,
    plan_stream,
    restore,
)

IN_MEMORY_SPILL_BYTES: int | None = 4 * 1024
"""Leaf bodies longer than this of a MIME message held in memory are not fed to the parser
either (`stream`'s stand-ins, decoded from the message's bytes): the feed parser looks at
every line of a body for a boundary, 1.7 ms for a 100 KB message with a 70 KB attachment,
the walk that finds the bodies 0.18 ms. None feeds every body (tests compare the two)."""
WALKED_SPILL_BYTES = 1024
"""Once the walk runs (a body over `IN_MEMORY_SPILL_BYTES`), the bodies over this are stand-ins
as well: the walk has found them anyway, and feeding a 2 KB quoted-printable part's lines to
the parser cost more than decoding it from the bytes (100 KB MIME bench, text and HTML parts
of 2 KB: A/B 1.06x, 1.03-1.13)."""
_STRETCHES_LOOKED_AT = 64
_CLEAN_BASE64 = re.compile(CLEAN_BASE64)
_ADDRESS_HEADERS = frozenset({"from", "to", "cc", "reply-to"})
_NOT_SIMPLE = re.compile(r'["()\\;:\[\]]')
_ATOM_ADDRESS = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_SIMPLE_ADDRESS = re.compile(rf"{_ATOM_ADDRESS}@{_ATOM_ADDRESS}")
_SIMPLE_DISPLAY_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~. \t-]*")


@dataclass(frozen=True, slots=True)
class ParseOptions:
    """Limits that keep a hostile message from costing more than a normal one."""

    max_depth: int = 50
    max_parts: int = 1000
    max_header_bytes: int = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ParsedPart:
    """A leaf that is not one of the two bodies (an attachment), with its content decoded,
    or (`content` empty) left in the spool file as `body` for the storage to decode into a
    file; `AttachmentStorage` turns it into the event's `Attachment`."""

    filename: str | None
    content_type: str
    content: bytes
    content_id: str | None
    inline: bool
    body: FileBody | None = None

    @property
    def size(self) -> int:
        return len(self.content) if self.body is None else self.body.size

    def read(self) -> bytes:
        """The decoded bytes, from the spool file for a `body` (blocking)."""
        return self.content if self.body is None else self.body.read()


@dataclass(slots=True)
class ParsedMessage:
    """Everything the event needs from the message itself (not from the SMTP envelope)."""

    message_id: str | None = None
    subject: str = ""
    from_: list[Address] = field(default_factory=list)
    to: list[Address] = field(default_factory=list)
    cc: list[Address] = field(default_factory=list)
    reply_to: list[Address] = field(default_factory=list)
    headers: dict[str, list[str]] = field(default_factory=dict)
    body: str = ""
    html_body: str = ""
    attachments: list[ParsedPart] = field(default_factory=list)
    parse_errors: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Leaf:
    """A leaf part with the facts every later step asks for, read from its headers once."""

    part: Message
    in_alternative: bool
    number: int
    content_type: str = ""
    disposition: str = ""
    attached: bool = False

    def __post_init__(self) -> None:
        self.content_type = self.part.get_content_type()
        # str(): compat32 hands a header holding 8-bit bytes over as a `Header` object
        disposition = str(self.part.get("Content-Disposition", ""))
        self.disposition = disposition.partition(";")[0].strip().lower()
        self.attached = self.disposition == "attachment" or self._has_filename(disposition)

    def _has_filename(self, disposition: str) -> bool:
        """Whether a filename parameter is there, without decoding it (that is
        `_filename_of`'s work, done once and only for attachments)."""
        content_type = str(self.part.get("Content-Type", "")).lower()
        if not disposition and "name" not in content_type:
            return False
        return (
            self.part.get_param("filename", None, "content-disposition") is not None
            or self.part.get_param("name", None, "content-type") is not None
        )


def parse(raw: bytes, options: ParseOptions = ParseOptions()) -> ParsedMessage:
    """Parse `raw`; never raises, so a message the parser dislikes is still delivered."""
    return _parse(raw, options, quick_check=True)


def parse_file(
    path: Path,
    options: ParseOptions = ParseOptions(),
    *,
    spill_over: int = SPILL_BYTES,
    attachments_in_file: bool = False,
) -> ParsedMessage:
    """Parse a spooled message from its file, which must not be empty; blocking. The result
    is `parse`'s for the same bytes, except that with `attachments_in_file` an attachment
    whose body was spilled and needs no `email` decoding is left in the file (`ParsedPart.
    body`), for a storage that writes it to a file of its own.

    The file is mapped, not read: the pre-scan and the chunked feed see its pages, which the
    kernel drops and reads again as it needs, so the message is never held whole in the
    process's own memory, and leaf bodies over `spill_over` bytes are decoded from the
    pages instead of being fed (`stream`). Only the walk pre-scans it (`within_every_limit`
    needs the whole message as bytes, and the walk finds the bodies).
    """
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        mapped.madvise(mmap.MADV_SEQUENTIAL)
        # an mmap offers what the pre-scan and the feed use of bytes: len, slices, find,
        # rfind, the buffer protocol for re and memoryview
        in_file = path if attachments_in_file else None
        return _parse(
            cast(bytes, mapped), options, quick_check=False, spill_over=spill_over, in_file=in_file
        )


def _parse(
    raw: bytes,
    options: ParseOptions,
    *,
    quick_check: bool,
    spill_over: int | None = None,
    in_file: Path | None = None,
) -> ParsedMessage:
    result = ParsedMessage()
    limits = {
        "max_parts": options.max_parts,
        "max_depth": options.max_depth,
        "max_header_bytes": options.max_header_bytes,
    }
    plan: FeedPlan | None
    if spill_over is not None:
        plan, message = _parse_spilling(raw, limits, spill_over)
    elif quick_check and (plain := plain_message(raw, options.max_header_bytes)) is not None:
        plan, message = None, plain
    elif quick_check and (threshold := _in_memory_spill(raw)) is not None:
        plan, message = _parse_spilling(raw, limits, min(threshold, WALKED_SPILL_BYTES))
    else:
        within = quick_check and within_every_limit(raw, **limits)
        plan = None if within else plan_feed(raw, **limits)
        message = parse_in_chunks(raw, spans=None if plan is None else plan.spans)
    _fill_headers(message, result)
    try:
        _fill_parts(message, options, result, in_file)
    except (RecursionError, LookupError, ValueError, TypeError, AssertionError) as error:
        result.parse_errors.append(f"MIME structure could not be read: {error!r}")
    if plan is not None:
        result.parse_errors.extend(plan.cuts)
    result.parse_errors = list(dict.fromkeys(result.parse_errors))
    return result


def _in_memory_spill(raw: bytes) -> int | None:
    """`IN_MEMORY_SPILL_BYTES` for a message in memory that may hold a body over it, else
    None: without one, the walk that finds the bodies costs more than it spares (a 6 KB
    message of three 2 KB parts: 260 us fed, 400 us walked)."""
    threshold = IN_MEMORY_SPILL_BYTES
    if threshold is None or len(raw) <= threshold or not _long_stretch(raw, threshold):
        return None
    return threshold


def _long_stretch(raw: bytes, length: int) -> bool:
    """Whether more than `length` bytes run without a line that starts with `--`, as a leaf
    body over `length` does; after `_STRETCHES_LOOKED_AT` lines that do, no (the choice is
    only of the cheaper way to the same result). Each search stops `length` bytes on: past
    that the stretch is long whatever follows (a 70 KB attachment was searched to its end,
    74 us for the 100 KB MIME message, now 7 us)."""
    start = 0
    for _ in range(_STRETCHES_LOOKED_AT):
        found = raw.find(b"\n--", start, start + length + 3)
        if found < 0:
            return len(raw) - start > length
        start = found + 1
    return False


def _parse_spilling(
    raw: bytes, limits: dict[str, int], spill_over: int
) -> tuple[FeedPlan, Message]:
    """The parse with leaf bodies over `spill_over` bytes left in `raw`; should a stand-in
    not come back where the walk put it, the ordinary parse (same plan, bodies fed)."""
    plan, stand_ins = plan_stream(raw, spill_over=spill_over, **limits)
    message = parse_in_chunks(raw, spans=plan.spans, stand_ins=stand_ins.feed)
    if not stand_ins.attach(message):
        message = parse_in_chunks(raw, spans=plan.spans)
    return plan, message


def parse_in_chunks(
    raw: bytes,
    chunk: int = FEED_CHUNK,
    spans: Sequence[tuple[int, int]] | None = None,
    stand_ins: Sequence[tuple[int, int, bytes]] = (),
) -> Message:
    """The standard parser, fed piece by piece: `message_from_bytes` decodes the whole
    message to one string and splits all of it into lines before parsing, which peaks near
    eight times the message size; fed in chunks it stays under three.

    `spans` (all of `raw` by default) are the byte ranges to feed, as the pre-scan chose
    them. Each starts and ends at a line start; when one ends in a CR and the next begins
    with an LF, the LF that completes the CR is fed between them, so the two stay separate
    lines instead of merging into one CRLF. Each of `stand_ins` (start, end, text), in
    order and inside one span (not at its start), feeds its text instead of those bytes."""
    parser = BytesFeedParser(policy=PARSER_POLICY)
    replacing = iter(stand_ins)
    stand_in = next(replacing, None)
    previous_end = 0
    for start, end in spans if spans is not None else [(0, len(raw))]:
        if raw[previous_end - 1 : previous_end] == b"\r" and raw[start : start + 1] == b"\n":
            parser.feed(b"\n")
        position = start
        while stand_in is not None and stand_in[0] < end:
            feed_range(parser, raw, position, stand_in[0], chunk)
            parser.feed(stand_in[2])
            position = stand_in[1]
            stand_in = next(replacing, None)
        feed_range(parser, raw, position, end, chunk)
        previous_end = end
    return parser.close()


def _fill_headers(message: Message, result: ParsedMessage) -> None:
    errors = result.parse_errors
    headers: dict[str, list[str]] = {}
    folded: dict[str, str] = {}
    for name, value in message.raw_items():
        key = folded.setdefault(name.lower(), name)
        headers.setdefault(key, []).append(decode_header_value(value, errors, name))
    result.headers = headers
    message_id = _first(headers, folded, "message-id")
    result.message_id = message_id.strip() if message_id is not None else None
    result.subject = _first(headers, folded, "subject") or ""
    raw_values: dict[str, list[str]] = {}
    for name, value in message.raw_items():
        if name.lower() in _ADDRESS_HEADERS:
            raw_values.setdefault(name.lower(), []).append(value)
    result.from_ = _addresses(raw_values.get("from"), "From", errors)
    result.to = _addresses(raw_values.get("to"), "To", errors)
    result.cc = _addresses(raw_values.get("cc"), "Cc", errors)
    result.reply_to = _addresses(raw_values.get("reply-to"), "Reply-To", errors)


def _first(headers: dict[str, list[str]], folded: dict[str, str], lower: str) -> str | None:
    key = folded.get(lower)
    return headers[key][0] if key is not None else None


def _raw_header_text(value: object, errors: list[str], name: str) -> str:
    """Unfold and undo compat32's surrogate escapes: raw 8-bit header bytes are UTF-8 in
    practice."""
    text = str(value)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raw = text.encode("utf-8", "surrogateescape")
            text = decode_bytes(raw, "utf-8", errors, f"header {name}")
    return unfold(text)


def decode_header_value(value: object, errors: list[str], name: str) -> str:
    """Unfold and decode RFC 2047 encoded words; undecodable bytes become U+FFFD."""
    text = _raw_header_text(value, errors, name)
    return decode_encoded_words(text, errors, f"header {name}") if "=?" in text else text


def _addresses(values: list[str] | None, name: str, errors: list[str]) -> list[Address]:
    if not values:
        return []
    texts = [_raw_header_text(value, errors, name) for value in values]
    found: list[Address] = []
    for display, email in simple_addresses(texts) or split_addresses(texts, errors, name):
        if not email:
            continue
        found.append(Address(email=email, name=decode_header_value(display, errors, name)))
    return found


def simple_addresses(texts: list[str]) -> list[tuple[str, str]] | None:
    """`getaddresses` for the plain forms nearly all mail uses, at a fraction of its cost.

    Handles `a@b`, `Name <a@b>` and lists of them; anything with quotes, comments,
    escapes, groups or routes returns None, and the caller asks `split_addresses`.
    """
    found: list[tuple[str, str]] = []
    for text in texts:
        if _NOT_SIMPLE.search(text):
            return None
        for item in text.split(","):
            pair = _simple_address(item.strip(" \t"))
            if pair is None:
                return None
            if pair[1]:
                found.append(pair)
    return found


def _simple_address(item: str) -> tuple[str, str] | None:
    """`Name <a@b>` or `a@b` (("", "") for nothing), by patterns that never backtrack: a
    pattern with a lazy name before optional spaces took cubic time on a folded header."""
    if not item:
        return "", ""
    if item.endswith(">"):
        display, _, address = item[:-1].partition("<")
        if _SIMPLE_DISPLAY_NAME.fullmatch(display) and _SIMPLE_ADDRESS.fullmatch(address):
            return " ".join(display.split()), address
        return None
    return ("", item) if _SIMPLE_ADDRESS.fullmatch(item) else None


def _fill_parts(
    message: Message, options: ParseOptions, result: ParsedMessage, in_file: Path | None = None
) -> None:
    leaves = list(_walk_leaves(message, options.max_depth, result.parse_errors))
    body = _pick_body(leaves, "text/plain")
    html = _pick_body(leaves, "text/html")
    for leaf in leaves:
        if leaf is body:
            result.body = _text_of(leaf, result.parse_errors)
        elif leaf is html:
            result.html_body = _text_of(leaf, result.parse_errors)
        else:
            result.attachments.append(_attachment_of(leaf, result.parse_errors, in_file))


def _walk_leaves(message: Message, max_depth: int, errors: list[str]) -> Iterator[_Leaf]:
    """Yield leaves in document order without recursion, down to `max_depth`.

    A multipart is a container whatever became of its parts: one whose parts could not be
    read (no boundary, a boundary that never appears, only a preamble) yields nothing, and
    `parse_errors` says so, instead of turning into an attachment of its raw text."""
    stack: list[tuple[Message, int, bool]] = [(message, 0, False)]
    number = 0
    while stack:
        part, depth, in_alternative = stack.pop()
        number += 1
        if part.get_content_maintype() != "multipart":
            errors.extend(f"part {number}: {type(d).__name__}" for d in part.defects)
            yield _Leaf(part, in_alternative, number)
        elif depth >= max_depth:
            continue  # the pre-scan fed none of its parts, and its cut says so
        else:
            errors.extend(f"part {number}: {type(d).__name__}" for d in part.defects)
            alternative = in_alternative or part.get_content_subtype() == "alternative"
            children = _parts_of(part, number, errors)
            stack.extend((child, depth + 1, alternative) for child in reversed(children))


def _parts_of(container: Message, number: int, errors: list[str]) -> list[Message]:
    children = container.get_payload()
    parts = (
        [child for child in children if isinstance(child, Message)]
        if isinstance(children, list)
        else []
    )
    if not parts:
        errors.append(
            f"part {number}: {container.get_content_type()} without readable parts,"
            " delivered as neither body nor attachment"
        )
    return parts


def _pick_body(leaves: list[_Leaf], content_type: str) -> _Leaf | None:
    candidates = [
        leaf for leaf in leaves if leaf.content_type == content_type and not leaf.attached
    ]
    preferred = [leaf for leaf in candidates if leaf.in_alternative]
    chosen = preferred or candidates
    return chosen[0] if chosen else None


def _payload_bytes(leaf: _Leaf, errors: list[str]) -> bytes:
    part = leaf.part
    if part.get_content_maintype() == "message" or part.is_multipart():
        return _embedded_message_bytes(part)
    decoded = clean_base64(part)
    if decoded is not None:
        return decoded
    payload = _decoded_payload(part)
    errors.extend(f"part {leaf.number}: {type(d).__name__}" for d in part.defects)
    part.defects.clear()
    return payload if isinstance(payload, bytes) else b""


def clean_base64(part: Message) -> bytes | None:
    """A well-formed base64 body decoded in one step, or None to let `email` decode it.

    `get_payload(decode=True)` copies the body three times on the way (bytes, split lines,
    joined) before decoding, about 4.5 times the size of a large attachment at its peak.
    For a body of only base64 characters and line breaks, correctly padded, its answer is
    exactly `a2b_base64` of the text (which skips line breaks) with no defect to report;
    anything else goes the standard way, defects included.
    """
    if _transfer_encoding(part) != "base64":
        return None
    spilled = _spilled(part)
    if spilled is not None:
        return spilled.clean_base64()
    payload = _undecoded_payload(part)
    if not isinstance(payload, str) or _CLEAN_BASE64.fullmatch(payload) is None:
        return None
    if (len(payload) - payload.count("\n") - payload.count("\r")) % 4:
        return None
    return binascii.a2b_base64(payload)


def _transfer_encoding(part: Message) -> str:
    return str(part.get("Content-Transfer-Encoding", "")).lower()  # as email reads it


def _spilled(part: Message) -> SpilledBody | None:
    return part.spilled if isinstance(part, MimePart) else None


def _decoded_payload(part: Message) -> object:
    """`get_payload(decode=True)`; a spilled body is decoded from the file, or handed back
    to the part as the text the parser would have made when `email` must decode it."""
    spilled = _spilled(part)
    if spilled is not None:
        decoded = spilled.decoded(_transfer_encoding(part))
        if decoded is not None:
            return decoded
        restore(part)
    return part.get_payload(decode=True)


def _undecoded_payload(part: Message) -> object:
    """The payload as the parser stored it, 8-bit bytes as surrogate escapes (None if it
    has none): `get_payload()` for a body of ASCII and for a container.

    For a body holding 8-bit bytes `get_payload()` decodes them by the part's charset
    parameter, the sender's unscreened choice: `undefined` raises there and `punycode` takes
    time quadratic in the body, on the event loop below `offload_bytes`. compat32 has no
    public way to skip that step; its own `BytesGenerator` reads this attribute too."""
    return vars(part).get("_payload")


def _embedded_message_bytes(part: Message) -> bytes:
    restore(part)
    inner = _undecoded_payload(part)
    if inner is None:
        raw = part.get_payload(decode=True)
        return raw if isinstance(raw, bytes) else b""
    if isinstance(inner, list):
        if not inner:
            return b""
        return b"".join(_as_crlf_bytes(m) for m in inner if isinstance(m, Message))
    if isinstance(inner, str):
        return inner.encode("utf-8", "surrogateescape")
    return b""


def _as_crlf_bytes(message: Message) -> bytes:
    return message.as_bytes(policy=compat32.clone(linesep="\r\n"))


def _text_of(leaf: _Leaf, errors: list[str]) -> str:
    charset = leaf.part.get_content_charset("us-ascii")  # a charset="" is recorded
    # reading Content-Type's parameters, first done here, may have found them unreadable
    errors.extend(f"part {leaf.number}: {type(d).__name__}" for d in leaf.part.defects)
    where = f"part {leaf.number} ({leaf.content_type})"
    spilled = _spilled(leaf.part)
    pieces = (
        None if spilled is None else spilled.text_pieces(_transfer_encoding(leaf.part), charset)
    )
    if pieces is not None:
        # what _payload_bytes does for these octets besides reading them
        errors.extend(f"part {leaf.number}: {type(d).__name__}" for d in leaf.part.defects)
        leaf.part.defects.clear()
        # pieces end after a line feed: no CRLF is split between two
        return "".join(_lines_of(decode_bytes(piece, charset, errors, where)) for piece in pieces)
    # the bytes go as soon as they are text: a large body is held twice at most
    return _lines_of(decode_bytes(_payload_bytes(leaf, errors), charset, errors, where))


def _lines_of(text: str) -> str:
    """`re.sub(r"\r\n?", "\n", text)`, without the list of every line re.sub builds.

    The universal-newlines translation of `io` does it in one pass in C (a 100 KB CRLF
    body: 60 us; `str.replace` of CRLF then of CR took 180 us, split and join 100 us)."""
    if "\r" not in text:
        return text
    return io.IncrementalNewlineDecoder(None, translate=True).decode(text, final=True)


def _attachment_of(leaf: _Leaf, errors: list[str], in_file: Path | None = None) -> ParsedPart:
    part = leaf.part
    content_id = part.get("Content-ID")
    cid = (
        _raw_header_text(content_id, errors, "Content-ID").strip().strip("<>")
        if content_id
        else None
    )
    filename = _filename_of(part, errors)
    body = None if in_file is None else _body_in_file(leaf, in_file, errors)
    return ParsedPart(
        filename=filename,
        content_type=leaf.content_type,
        content=_payload_bytes(leaf, errors) if body is None else b"",
        content_id=cid or None,
        inline=leaf.disposition == "inline",
        body=body,
    )


def _body_in_file(leaf: _Leaf, path: Path, errors: list[str]) -> FileBody | None:
    """A spilled leaf's body as `_payload_bytes` would decode it, left in the file at `path`
    (the defects it would report, reported)."""
    part = leaf.part
    spilled = _spilled(part)
    if spilled is None or part.get_content_maintype() == "message" or part.is_multipart():
        return None
    body = spilled.in_file(path, _transfer_encoding(part))
    if body is not None and not body.base64:  # clean base64 has no defect to report
        errors.extend(f"part {leaf.number}: {type(d).__name__}" for d in part.defects)
        part.defects.clear()
    return body


def _filename_of(part: Message, errors: list[str]) -> str | None:
    raw = part.get_param("filename", None, "content-disposition")
    if raw is None:
        raw = part.get_param("name", None, "content-type")
    if raw is None:
        return None
    if isinstance(raw, tuple):  # RFC 2231: charset, language, text
        charset, _, encoded = raw
        return decode_octets(encoded, charset or "utf-8", errors, "filename")
    return decode_header_value(collapse_rfc2231_value(raw), errors, "filename")
