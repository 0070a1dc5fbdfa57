"""`parse._long_stretch` searches at most `length` bytes on for the next line starting with
`--`; it must answer as a search to the end of the message does (it picks the walk or the feed)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mailrunner.mime import parse as parse_module


def searched_to_the_end(raw: bytes, length: int) -> bool:
    start = 0
    for _ in range(parse_module._STRETCHES_LOOKED_AT):
        found = raw.find(b"\n--", start)
        end = len(raw) if found < 0 else found
        if end - start > length:
            return True
        if found < 0:
            return False
        start = found + 1
    return False


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.sampled_from([b"\n--", b"\n", b"-", b"--", b"a", b"abcdefgh" * 4]), max_size=80),
    st.integers(min_value=0, max_value=40),
)
def test_the_bounded_search_answers_as_the_whole_one(pieces: list[bytes], length: int) -> None:
    raw = b"".join(pieces)
    assert parse_module._long_stretch(raw, length) == searched_to_the_end(raw, length)


def test_a_long_attachment_is_a_long_stretch_without_a_delimiter_after_it() -> None:
    assert parse_module._long_stretch(b"--b\n" + b"A" * 5000, 4096) is True
    assert parse_module._long_stretch(b"--b\n" + b"A" * 4000 + b"\n--b--\n", 4096) is False
