"""Goridge v3 frames: the wire format between the server's worker pools and worker processes.

The same codec runs on both ends of the relay: the pool (asyncio, `pool/relay.py`) and the
worker SDK (`mailrunner.worker`, blocking stdio). Worker processes import this module at
start-up, so it uses the standard library only, and its errors are `WireError`s rather than
part of `errors.py` (the pool turns them into `WorkerCrashed` at its edge).

Layout of one frame (all integers little-endian)::

    byte 0      version (high nibble, always 1) | header length in 32-bit words (low nibble,
                3 + number of option words)
    byte 1      flags (`Flag`)
    bytes 2-5   payload length, uint32
    bytes 6-9   CRC32 (IEEE, `zlib.crc32`) of bytes 0-5, uint32
    bytes 10-11 reserved, written as zero and ignored when read
    ...         option words, uint32 each, at most 10
    ...         payload

A payload frame carries option 0 = context length, and payload = context + body.

Decoding is split in two steps so that asyncio code (`StreamReader.readexactly`) and blocking
code (`read_frame`) share it: `parse_header` validates the fixed 12 bytes and says how many
bytes follow, `build` turns those bytes into a `Frame`.
"""

from __future__ import annotations

import enum
import json
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO

from mailrunner.wire.errors import WireError

__all__ = [
    "HEADER_SIZE",
    "MAX_OPTIONS",
    "MAX_PAYLOAD",
    "VERSION",
    "BadChecksum",
    "BadVersion",
    "Flag",
    "Frame",
    "FrameError",
    "FrameTooLarge",
    "Header",
    "TruncatedFrame",
    "build",
    "control_frame",
    "encode",
    "encode_header",
    "parse_control",
    "parse_header",
    "payload_frame",
    "read_frame",
    "split_payload",
    "write_frame",
]

VERSION = 1
HEADER_SIZE = 12
MAX_OPTIONS = 10
MAX_PAYLOAD = 0xFFFF_FFFF
"""The largest payload the format can describe; callers pass a tighter `max_payload`."""

_MIN_HEADER_WORDS = HEADER_SIZE // 4
_MAX_HEADER_WORDS = _MIN_HEADER_WORDS + MAX_OPTIONS
_UINT32_MAX = 0xFFFF_FFFF
_FIXED = struct.Struct("<BBI")  # bytes 0-5: the part the CRC covers
_CRC = struct.Struct("<I")
_RESERVED = b"\x00\x00"


class FrameError(WireError):
    """A frame cannot be encoded or decoded; the relay that saw it is no longer trustworthy."""


class BadChecksum(FrameError):
    """The header CRC does not match: the stream is corrupt or is not a frame stream at all."""


class BadVersion(FrameError):
    """The header names a protocol version other than 1."""


class FrameTooLarge(FrameError):
    """The payload length exceeds the reader's limit (or the format's uint32 limit)."""


class TruncatedFrame(FrameError):
    """The stream or buffer ended part-way through a frame."""


class Flag(enum.IntFlag):
    """Header byte 1. Codec flags describe the payload; they do not change how it is framed."""

    NONE = 0
    CONTROL = 0x01
    CODEC_RAW = 0x04
    CODEC_JSON = 0x08
    CODEC_MSGPACK = 0x10
    CODEC_GOB = 0x20
    ERROR = 0x40
    CODEC_PROTO = 0x80


@dataclass(frozen=True, slots=True, repr=False)
class Frame:
    """One decoded frame. `options` are the raw uint32 option words (at most 10)."""

    flags: Flag
    payload: bytes
    options: tuple[int, ...] = ()

    def __repr__(self) -> str:
        # Payloads can be megabytes of email: show their size, not their content.
        return (
            f"Frame(flags={self.flags!r}, options={self.options!r}, "
            f"payload=<{len(self.payload)} bytes>)"
        )


@dataclass(frozen=True, slots=True)
class Header:
    """A validated frame header: what it says, and how many bytes the reader must read next."""

    flags: Flag
    options_size: int
    """Bytes of option words that follow the 12-byte header."""
    payload_size: int
    """Bytes of payload that follow the option words."""

    @property
    def remaining(self) -> int:
        """Bytes still to read after the 12-byte header: options, then payload."""
        return self.options_size + self.payload_size


# --- encoding ----------------------------------------------------------------------------


def encode_header(frame: Frame) -> bytes:
    """Return the header and option words of `frame`, without its payload.

    Writers send this and then `frame.payload` as a second write, which avoids copying a
    large payload just to prepend twelve bytes.
    """
    _check_encodable(frame)
    fixed = _FIXED.pack(
        (VERSION << 4) | (_MIN_HEADER_WORDS + len(frame.options)),
        int(frame.flags),
        len(frame.payload),
    )
    crc = _CRC.pack(zlib.crc32(fixed))
    options = struct.pack(f"<{len(frame.options)}I", *frame.options)
    return fixed + crc + _RESERVED + options


def encode(frame: Frame) -> bytes:
    """Return the whole frame as bytes."""
    return encode_header(frame) + frame.payload


def _check_encodable(frame: Frame) -> None:
    if not 0 <= int(frame.flags) <= 0xFF:
        raise FrameError(f"flags must fit in one byte, got {int(frame.flags):#x}")
    if len(frame.options) > MAX_OPTIONS:
        raise FrameError(f"a frame carries at most {MAX_OPTIONS} options, got {len(frame.options)}")
    for index, option in enumerate(frame.options):
        if not 0 <= option <= _UINT32_MAX:
            raise FrameError(f"option {index} must be a uint32, got {option}")
    if len(frame.payload) > MAX_PAYLOAD:
        raise FrameTooLarge(
            f"payload is {len(frame.payload)} bytes, the format allows at most {MAX_PAYLOAD}"
        )


# --- decoding ----------------------------------------------------------------------------


def parse_header(header12: bytes, max_payload: int = MAX_PAYLOAD) -> Header:
    """Validate the fixed 12-byte header and say how many bytes follow it.

    The CRC is checked first: a header that fails it is corruption (or a stray text write to
    the relay), and its version and length fields mean nothing.
    """
    if len(header12) != HEADER_SIZE:
        raise TruncatedFrame(f"frame header is {HEADER_SIZE} bytes, got {len(header12)}")
    first, flags, payload_size = _FIXED.unpack_from(header12)
    _check_crc(header12)
    _check_version(first)
    words = first & 0x0F
    if not _MIN_HEADER_WORDS <= words <= _MAX_HEADER_WORDS:
        raise FrameError(
            f"header length is {words} words, expected {_MIN_HEADER_WORDS}..{_MAX_HEADER_WORDS}"
        )
    if payload_size > max_payload:
        raise FrameTooLarge(f"payload length is {payload_size} bytes, limit is {max_payload}")
    return Header(
        flags=Flag(flags),
        options_size=(words - _MIN_HEADER_WORDS) * 4,
        payload_size=payload_size,
    )


def _check_crc(header12: bytes) -> None:
    (expected,) = _CRC.unpack_from(header12, 6)
    actual = zlib.crc32(header12[:6])
    if expected != actual:
        raise BadChecksum(
            f"header CRC is {expected:#010x}, computed {actual:#010x} "
            f"(header bytes {header12.hex()}{_text_hint(header12)})"
        )


def _check_version(first: int) -> None:
    version = first >> 4
    if version != VERSION:
        raise BadVersion(
            f"frame version is {version}, expected {VERSION} (header byte 0 = {first:#04x})"
        )


def _text_hint(data: bytes) -> str:
    """Name the most common cause of a corrupt relay: text printed to the frame stream."""
    if data.isascii() and all(byte >= 0x20 or byte in b"\t\r\n" for byte in data):
        return f"; looks like text {data.decode('ascii')!r}: is something printing to stdout?"
    return ""


def build(header: Header, rest: bytes) -> Frame:
    """Turn the `header.remaining` bytes that followed `header` into a `Frame`."""
    if len(rest) < header.remaining:
        raise TruncatedFrame(
            f"frame needs {header.remaining} bytes after its header "
            f"({header.options_size} of options, {header.payload_size} of payload), "
            f"got {len(rest)}"
        )
    if len(rest) > header.remaining:
        raise FrameError(
            f"frame takes {header.remaining} bytes after its header, got {len(rest)}: "
            "the caller read past the frame"
        )
    options = struct.unpack_from(f"<{header.options_size // 4}I", rest)
    payload = rest[header.options_size :] if header.options_size else rest
    return Frame(flags=header.flags, payload=payload, options=tuple(options))


# --- payload and control frames ----------------------------------------------------------


def payload_frame(context: bytes, body: bytes, flags: Flag = Flag.CODEC_RAW) -> Frame:
    """Build a payload frame: option 0 = context length, payload = context + body."""
    return Frame(flags=flags, payload=context + body, options=(len(context),))


def split_payload(frame: Frame) -> tuple[bytes, bytes]:
    """Return `(context, body)` of a payload frame, using option 0 as the context length."""
    if not frame.options:
        raise FrameError("payload frame has no options: option 0 (context length) is missing")
    context_size = frame.options[0]
    if context_size > len(frame.payload):
        raise FrameError(
            f"context length (option 0) is {context_size}, "
            f"but the payload is only {len(frame.payload)} bytes"
        )
    return frame.payload[:context_size], frame.payload[context_size:]


def control_frame(obj: Mapping[str, object]) -> Frame:
    """Build a CONTROL frame with a JSON payload (the pid handshake, stop)."""
    payload = json.dumps(obj, separators=(",", ":")).encode()
    return Frame(flags=Flag.CONTROL | Flag.CODEC_JSON, payload=payload)


def parse_control(frame: Frame) -> dict[str, object]:
    """Return the JSON object of a CONTROL frame."""
    if Flag.CONTROL not in frame.flags:
        raise FrameError(f"expected a CONTROL frame, got flags {frame.flags!r}")
    try:
        obj: object = json.loads(frame.payload)
    except ValueError as exc:
        raise FrameError(f"CONTROL frame payload is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise FrameError(f"CONTROL frame payload must be a JSON object, got {type(obj).__name__}")
    return obj


# --- blocking streams --------------------------------------------------------------------


def read_frame(stream: IO[bytes], max_payload: int = MAX_PAYLOAD) -> Frame | None:
    """Read one frame from a blocking binary stream.

    Returns None on a clean end of stream (no byte of a new frame was read); raises
    `TruncatedFrame` when the stream ends inside a frame.
    """
    header_bytes = _read_up_to(stream, HEADER_SIZE)
    if not header_bytes:
        return None
    if len(header_bytes) < HEADER_SIZE:
        raise TruncatedFrame(
            f"stream ended after {len(header_bytes)} of {HEADER_SIZE} frame header bytes"
        )
    header = parse_header(header_bytes, max_payload)
    rest = _read_up_to(stream, header.remaining)
    if len(rest) < header.remaining:
        raise TruncatedFrame(
            f"stream ended after {len(rest)} of {header.remaining} bytes following the "
            f"frame header ({header.options_size} of options, {header.payload_size} of payload)"
        )
    return build(header, rest)


def _read_up_to(stream: IO[bytes], size: int) -> bytes:
    """Read `size` bytes, fewer only at end of stream (raw pipes may return short reads)."""
    chunk = stream.read(size)
    if len(chunk) == size or not chunk:
        return chunk
    chunks = [chunk]
    got = len(chunk)
    while got < size:
        chunk = stream.read(size - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def write_frame(stream: IO[bytes], frame: Frame) -> None:
    """Write one frame and flush, so the peer sees it before we block on the next read."""
    stream.write(encode_header(frame))
    if frame.payload:
        stream.write(frame.payload)
    stream.flush()
