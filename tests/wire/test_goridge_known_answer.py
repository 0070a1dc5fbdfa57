"""Known answers for the frame codec, written byte by byte from the Go implementation.

The other codec tests check our encoder against our decoder and against `zlib`, so a layout
both ends got wrong the same way would pass them. These frames are laid out by hand from
roadrunner-server/goridge (`pkg/frame/frame.go`, `frame_flags.go`): byte 0 is the version
shifted into the high nibble OR'd with the header length in 32-bit words (3, plus one per
option), byte 1 the flags, bytes 2-5 the payload length little-endian, bytes 6-9
`crc32.ChecksumIEEE` of bytes 0-5 little-endian, bytes 10-11 reserved zeroes, then the
options as little-endian uint32s, then the payload. The CRC values were worked out once with
a bitwise CRC-32 (polynomial 0xEDB88320), not with the codec's `zlib`.
"""

from __future__ import annotations

import io

import pytest

from mailrunner.wire.frame import (
    Flag,
    Frame,
    control_frame,
    encode,
    parse_control,
    payload_frame,
    read_frame,
    split_payload,
)

PAYLOAD_FRAME = (
    bytes.fromhex(
        "14"  # version 1 << 4 | header length 4 words (3 + one option)
        "04"  # flags: CODEC_RAW
        "07000000"  # payload length 7
        "577fd241"  # CRC32 of 14 04 07 00 00 00 = 0x41d27f57
        "0000"  # reserved
        "02000000"  # option 0: context length 2
    )
    + b"{}hello"
)
"""What a worker writes for context `{}` and body `hello`."""

CONTROL_FRAME = (
    bytes.fromhex(
        "13"  # version 1 << 4 | header length 3 words (no options)
        "09"  # flags: CONTROL | CODEC_JSON
        "0d000000"  # payload length 13
        "3a6bfacb"  # CRC32 of 13 09 0d 00 00 00 = 0xcbfa6b3a
        "0000"  # reserved
    )
    + b'{"pid":12345}'
)
"""The pid handshake a worker answers with."""


@pytest.mark.parametrize(
    ("frame", "wire"),
    [
        (payload_frame(b"{}", b"hello"), PAYLOAD_FRAME),
        (control_frame({"pid": 12345}), CONTROL_FRAME),
    ],
    ids=["payload", "control"],
)
def test_encode_writes_the_bytes_goridge_lays_out_and_read_frame_reads_them_back(
    frame: Frame, wire: bytes
) -> None:
    assert encode(frame).hex() == wire.hex()
    assert read_frame(io.BytesIO(wire)) == frame


def test_the_known_payload_frame_splits_into_its_context_and_body() -> None:
    frame = read_frame(io.BytesIO(PAYLOAD_FRAME))
    assert frame is not None
    assert frame.flags == Flag.CODEC_RAW
    assert split_payload(frame) == (b"{}", b"hello")


def test_the_known_control_frame_reads_as_its_json_object() -> None:
    frame = read_frame(io.BytesIO(CONTROL_FRAME))
    assert frame is not None
    assert frame.flags == Flag.CONTROL | Flag.CODEC_JSON
    assert parse_control(frame) == {"pid": 12345}
