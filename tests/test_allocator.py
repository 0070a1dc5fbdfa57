"""The allocator settings `mailrunner serve` makes: glibc accepts both (a refused one would
only log a warning, and the speed or memory it buys would go unnoticed), and the heap it
gives back once idle."""

from __future__ import annotations

import platform
import smtplib
import subprocess
import sys
from collections.abc import Callable

import pytest

from mailrunner.allocator import keep_heap_slack, release_large_buffers
from support.processes import ServeProcess
from support.waiting import wait_until

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")


def test_glibc_accepts_the_pinned_mmap_threshold() -> None:
    assert release_large_buffers() is True


def test_glibc_accepts_the_heap_top_pad() -> None:
    assert keep_heap_slack() is True


TRIM_PROBE = """
import gc
from pathlib import Path
from mailrunner.allocator import keep_heap_slack, release_large_buffers, trim_heap

def resident_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

release_large_buffers()
keep_heap_slack()
burst = [bytes(2000) + bytes([i % 256]) for i in range(40_000)]  # 80 MB of small buffers
del burst
gc.collect()
before = resident_mb()
trimmed = trim_heap()
print(before, resident_mb(), trimmed)
"""


def test_trim_heap_gives_back_what_a_burst_left_in_the_heap() -> None:
    """What `serve` does when its last connection closes: the buffers a burst of messages
    freed stay resident (the heap keeps its top pad, and more) until trimmed."""
    result = subprocess.run(
        [sys.executable, "-c", TRIM_PROBE], capture_output=True, text=True, check=True
    )
    before, after, trimmed = result.stdout.split()
    assert trimmed == "True"
    assert float(before) - float(after) > 10, f"resident {before} MB before, {after} MB after"


def test_serve_trims_its_heap_when_its_last_connection_closes(
    serve: Callable[..., ServeProcess],
) -> None:
    server = serve(logs={"level": "debug"})
    first = smtplib.SMTP("127.0.0.1", server.port)
    second = smtplib.SMTP("127.0.0.1", server.port)
    first.sendmail("a@example.com", ["b@example.com"], b"Subject: burst\r\n\r\nbody\r\n")
    first.quit()
    wait_until(lambda: server.logs().count("connection closed") == 1, "the first to close")
    assert "heap trimmed" not in server.logs(), "trimmed while a connection was open"
    second.quit()
    wait_until(lambda: "heap trimmed" in server.logs(), "a trim once the last one closed")
