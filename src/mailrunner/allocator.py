"""Make glibc give large freed buffers back to the system at once, in a `mailrunner serve`
process only.

A 10 MB message passes through buffers of its size on the event loop's thread and on the
parse threads. glibc serves such a buffer with mmap and unmaps it when freed, but after the
first free it raises its mmap threshold to that size (the "dynamic threshold"), so every
later buffer of that size is carved from a per-thread heap arena and kept there: memory a
parse thread freed is not reused by the loop thread, and the process peaks at over seven
times the message where two fewer copies are ever alive. Setting the threshold pins it
(glibc then stops adjusting it), so big buffers stay mmapped and freed memory returns to
the system. Small allocations are unaffected.

Process-wide, like the signal handlers: only `App.serve_until_signalled` calls it, never a
server embedded in someone else's process (the tests, the pytest plugin).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

import structlog

log = structlog.get_logger("mailrunner.allocator")

M_MMAP_THRESHOLD = -3
"""mallopt's parameter number in glibc's malloc.h."""
MMAP_THRESHOLD = 128 * 1024
"""glibc's own starting value: buffers above it are mmapped, and now stay so."""


def release_large_buffers() -> bool:
    """Pin glibc's mmap threshold; whether it was set (False on other C libraries)."""
    if platform.libc_ver()[0] != "glibc":
        return False
    path = ctypes.util.find_library("c")
    if path is None:
        return False
    libc = ctypes.CDLL(path)
    if libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        log.warning("mallopt refused the mmap threshold", threshold=MMAP_THRESHOLD)
        return False
    return True
