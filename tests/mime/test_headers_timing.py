"""Parsing time grows linearly with a hostile header, whatever the header holds.

Before the linear decoder and splitter, a few kilobytes of folded whitespace in `To:` took
minutes (a regex with a lazy name before optional spaces is cubic there), 2,000 `(` raised
RecursionError and `decode_header` was quadratic. Python's `re` holds the GIL, so a slow
parse on a thread still stops the whole server: the parse itself must be linear.

Times are `process_time` of the whole `parse()`, best of three, compared within the test
(so a loaded machine slows both sizes alike); linear growth is 8x from 64 KB to 512 KB,
quadratic 64x.
"""

from __future__ import annotations

import gc
import time

import pytest

from mailrunner.mime.parse import parse
from support.hostile_headers import PATTERNS, hostile_message

KIB = 1024
SIZES = (8 * KIB, 64 * KIB, 512 * KIB)
LINEAR_WITH_HEADROOM = 24.0
"""Eight times the bytes may take at most 24 times as long: three times linear, so a busy
machine's noise passes, and well under the 64 times any quadratic step takes (the attacks
this guards against grew 27x to 64x per 8x and took minutes at 512 KiB)."""


def parse_seconds(raw: bytes) -> float:
    """CPU seconds of the fastest of three parses (the others met a busy machine)."""
    best = float("inf")
    for _ in range(3):
        gc.collect()
        started = time.process_time()
        parse(raw)
        best = min(best, time.process_time() - started)
    return best


@pytest.mark.parametrize("kind", PATTERNS)
def test_parse_time_grows_linearly_with_a_hostile_header(kind: str) -> None:
    small, medium, large = (parse_seconds(hostile_message([kind], size)) for size in SIZES)
    timings = f"{kind}: 8 KiB {small:.4f}s, 64 KiB {medium:.4f}s, 512 KiB {large:.4f}s"
    assert large <= LINEAR_WITH_HEADROOM * medium, f"superlinear: {timings}"
    assert medium <= LINEAR_WITH_HEADROOM * max(small, 1e-4), f"superlinear: {timings}"
    assert large < 5.0, f"far too slow: {timings}"


PUNYCODE_ATTACKS = {
    "base64 body holding 8-bit bytes": lambda size: (
        b"Content-Type: application/octet-stream; charset=punycode\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n\xff-" + b"9" * size + b"\r\n"
    ),
    "rfc 2231 charset": lambda size: (
        b"Content-Type: text/plain; charset*=punycode''-" + b"9" * size + b"\r\n\r\nbody\r\n"
    ),
    "rfc 2231 boundary": lambda size: (
        b"Content-Type: multipart/mixed; boundary*=punycode''-" + b"9" * size + b"\r\n\r\n"
        b"--b\r\n\r\nbody\r\n--b--\r\n"
    ),
}
"""Where `email` would decode sender text by the sender's charset: `punycode` decodes in
quadratic time (512 KiB took over a minute)."""


@pytest.mark.parametrize("place", PUNYCODE_ATTACKS)
def test_parse_time_grows_linearly_with_text_in_charset_punycode(place: str) -> None:
    build = PUNYCODE_ATTACKS[place]
    medium, large = (parse_seconds(b"Subject: s\r\n" + build(size)) for size in SIZES[1:])
    timings = f"{place}: 64 KiB {medium:.4f}s, 512 KiB {large:.4f}s"
    assert large <= LINEAR_WITH_HEADROOM * max(medium, 1e-4), f"superlinear: {timings}"
    assert large < 5.0, f"far too slow: {timings}"
