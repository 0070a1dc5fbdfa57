"""The goridge v3 frame codec: round trips, and a clear error for every kind of bad frame."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailrunner.wire.frame import (
    HEADER_SIZE,
    MAX_OPTIONS,
    BadChecksum,
    BadVersion,
    Flag,
    Frame,
    FrameError,
    FrameTooLarge,
    TruncatedFrame,
    build,
    control_frame,
    encode,
    parse_control,
    parse_header,
    payload_frame,
    read_frame,
    split_payload,
    write_frame,
)

frames = st.builds(
    Frame,
    flags=st.integers(min_value=0, max_value=0xFF).map(Flag),
    payload=st.binary(max_size=4096),
    options=st.lists(st.integers(min_value=0, max_value=0xFFFF_FFFF), max_size=MAX_OPTIONS).map(
        tuple
    ),
)


def _decode(data: bytes, max_payload: int = 1 << 20) -> Frame:
    header = parse_header(data[:HEADER_SIZE], max_payload)
    return build(header, data[HEADER_SIZE:])


def _with_valid_crc(header: bytearray) -> bytes:
    """Re-sign an edited header, so a test reaches the check after the CRC."""
    header[6:10] = struct.pack("<I", zlib.crc32(bytes(header[:6])))
    return bytes(header)


@given(frames)
def test_encode_then_parse_header_and_build_round_trips(frame: Frame) -> None:
    data = encode(frame)

    header = parse_header(data[:HEADER_SIZE], max_payload=len(frame.payload))

    assert header.remaining == len(data) - HEADER_SIZE
    assert build(header, data[HEADER_SIZE:]) == frame


@given(st.lists(frames, max_size=5))
def test_read_frame_reads_back_a_stream_of_frames_then_none_at_clean_eof(
    sent: list[Frame],
) -> None:
    stream = io.BytesIO()
    for frame in sent:
        write_frame(stream, frame)
    stream.seek(0)

    received = [read_frame(stream, max_payload=4096) for _ in sent]

    assert received == sent
    assert read_frame(stream, max_payload=4096) is None


def test_header_layout_matches_the_goridge_v3_spec() -> None:
    data = encode(Frame(flags=Flag.CODEC_JSON, payload=b"abc", options=(7, 9)))

    assert data[0] == 0x15, "version 1 in the high nibble, 3 + 2 option words in the low one"
    assert data[1] == 0x08
    assert struct.unpack("<I", data[2:6]) == (3,)
    assert struct.unpack("<I", data[6:10]) == (zlib.crc32(data[:6]),)
    assert data[10:12] == b"\x00\x00"
    assert struct.unpack("<2I", data[12:20]) == (7, 9)
    assert data[20:] == b"abc"


def test_bad_crc_raises_bad_checksum_naming_both_values() -> None:
    data = bytearray(encode(Frame(flags=Flag.CODEC_RAW, payload=b"x")))
    data[2] ^= 0xFF

    with pytest.raises(BadChecksum, match=r"header CRC is 0x[0-9a-f]{8}, computed 0x[0-9a-f]{8}"):
        _decode(bytes(data))


def test_text_on_the_relay_is_reported_as_a_likely_stray_print() -> None:
    with pytest.raises(BadChecksum, match="is something printing to stdout"):
        parse_header(b"hello world\n")


def test_unknown_version_raises_bad_version() -> None:
    header = bytearray(encode(Frame(flags=Flag.CODEC_RAW, payload=b""))[:HEADER_SIZE])
    header[0] = (2 << 4) | 3

    with pytest.raises(
        BadVersion, match=r"frame version is 2, expected 1 \(header byte 0 = 0x23\)"
    ):
        parse_header(_with_valid_crc(header))


@pytest.mark.parametrize("words", [0, 2, 14, 15])
def test_header_length_outside_3_to_13_words_is_rejected(words: int) -> None:
    header = bytearray(encode(Frame(flags=Flag.CODEC_RAW, payload=b""))[:HEADER_SIZE])
    header[0] = (1 << 4) | words

    with pytest.raises(FrameError, match=f"header length is {words} words, expected 3..13"):
        parse_header(_with_valid_crc(header))


def test_payload_over_the_limit_raises_frame_too_large_with_length_and_limit() -> None:
    data = encode(Frame(flags=Flag.CODEC_RAW, payload=b"x" * 101))

    with pytest.raises(FrameTooLarge, match="payload length is 101 bytes, limit is 100"):
        parse_header(data[:HEADER_SIZE], max_payload=100)
    with pytest.raises(FrameTooLarge, match="limit is 100"):
        read_frame(io.BytesIO(data), max_payload=100)


def test_stream_cut_inside_the_header_raises_truncated_frame() -> None:
    data = encode(Frame(flags=Flag.CODEC_RAW, payload=b"abc"))

    with pytest.raises(TruncatedFrame, match="stream ended after 5 of 12 frame header bytes"):
        read_frame(io.BytesIO(data[:5]))


def test_stream_cut_inside_the_payload_raises_truncated_frame() -> None:
    data = encode(Frame(flags=Flag.CODEC_RAW, payload=b"abcdef", options=(2,)))

    with pytest.raises(
        TruncatedFrame, match=r"stream ended after 7 of 10 bytes .*4 of options, 6 of payload"
    ):
        read_frame(io.BytesIO(data[:-3]))


def test_build_with_too_few_bytes_raises_truncated_frame() -> None:
    data = encode(Frame(flags=Flag.CODEC_RAW, payload=b"abcdef"))
    header = parse_header(data[:HEADER_SIZE])

    with pytest.raises(TruncatedFrame, match=r"frame needs 6 bytes after its header.*got 4"):
        build(header, data[HEADER_SIZE:-2])


def test_short_header_buffer_raises_truncated_frame() -> None:
    with pytest.raises(TruncatedFrame, match="frame header is 12 bytes, got 11"):
        parse_header(b"\x13" * 11)


class _TrickleStream(io.RawIOBase):
    """A pipe that hands out one byte per read, as a raw pipe may."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._data.read(min(size, 1))


def test_read_frame_assembles_short_reads() -> None:
    frame = payload_frame(b"ctx", b"body")

    assert read_frame(_TrickleStream(encode(frame))) == frame  # type: ignore[arg-type]


def test_encode_rejects_more_than_ten_options() -> None:
    with pytest.raises(FrameError, match="at most 10 options, got 11"):
        encode(Frame(flags=Flag.CODEC_RAW, payload=b"", options=tuple(range(11))))


def test_encode_rejects_an_option_that_is_not_a_uint32() -> None:
    with pytest.raises(FrameError, match="option 1 must be a uint32"):
        encode(Frame(flags=Flag.CODEC_RAW, payload=b"", options=(0, 1 << 32)))


@given(context=st.binary(max_size=512), body=st.binary(max_size=512))
def test_payload_frame_and_split_payload_round_trip(context: bytes, body: bytes) -> None:
    frame = payload_frame(context, body)

    decoded = _decode(encode(frame))

    assert decoded.options == (len(context),)
    assert Flag.CODEC_RAW in decoded.flags
    assert split_payload(decoded) == (context, body)


def test_split_payload_without_option_0_says_it_is_missing() -> None:
    with pytest.raises(FrameError, match=r"option 0 \(context length\) is missing"):
        split_payload(Frame(flags=Flag.CODEC_RAW, payload=b"abc"))


def test_split_payload_with_context_longer_than_payload_is_an_error() -> None:
    with pytest.raises(FrameError, match=r"context length .* is 9, but the payload is only 3"):
        split_payload(Frame(flags=Flag.CODEC_RAW, payload=b"abc", options=(9,)))


def test_control_frame_round_trips_its_json_object() -> None:
    frame = _decode(encode(control_frame({"pid": 1234})))

    assert frame.flags == Flag.CONTROL | Flag.CODEC_JSON
    assert parse_control(frame) == {"pid": 1234}


def test_parse_control_rejects_a_payload_frame() -> None:
    with pytest.raises(FrameError, match="expected a CONTROL frame"):
        parse_control(payload_frame(b"", b"{}"))


def test_frame_repr_shows_payload_size_not_content() -> None:
    text = repr(Frame(flags=Flag.CODEC_RAW, payload=b"secret" * 100))

    assert "secret" not in text
    assert "<600 bytes>" in text
