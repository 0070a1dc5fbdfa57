"""The allocator settings `mailrunner serve` makes: glibc accepts both (a refused one would
only log a warning, and the speed or memory it buys would go unnoticed)."""

from __future__ import annotations

import platform

import pytest

from mailrunner.allocator import keep_heap_slack, release_large_buffers

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")


def test_glibc_accepts_the_pinned_mmap_threshold() -> None:
    assert release_large_buffers() is True


def test_glibc_accepts_the_heap_top_pad() -> None:
    assert keep_heap_slack() is True
