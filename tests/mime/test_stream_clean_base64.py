"""The spilled body's clean-base64 test (translate, in pieces) against the regex it replaced."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailrunner.mime import stream
from mailrunner.mime.stream import CLEAN_BASE64, SpilledBody

_REGEX = re.compile(CLEAN_BASE64.encode("ascii"))

bodies = st.lists(
    st.sampled_from(
        [b"QUJD", b"ZA", b"+/", b"9", b"=", b"==", b"\r\n", b"\n", b"\r", b" ", b"-", b"\xff"]
    ),
    max_size=24,
).map(b"".join)


def regex_characters(body: bytes) -> int | None:
    """What the regex and two counts of line breaks answered."""
    if _REGEX.fullmatch(body) is None:
        return None
    characters = len(body) - body.count(b"\n") - body.count(b"\r")
    return None if characters % 4 else characters


@settings(max_examples=500, deadline=None)
@given(
    body=bodies, before=st.binary(max_size=3), after=st.binary(max_size=3), piece=st.integers(1, 9)
)
def test_clean_base64_characters_agree_with_the_regex_at_any_piece_size(
    body: bytes, before: bytes, after: bytes, piece: int
) -> None:
    spilled = SpilledBody(before + body + after, len(before), len(before) + len(body))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stream, "_COUNT_CHUNK", piece)
        assert spilled._clean_base64_characters() == regex_characters(body)


def test_padding_followed_by_more_base64_is_not_clean() -> None:
    assert SpilledBody(b"QUJD=\r\nQUI=", 0, 11)._clean_base64_characters() is None
    assert SpilledBody(b"QU=\r\n=\r\n", 0, 8)._clean_base64_characters() == 4
