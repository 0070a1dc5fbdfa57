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

It also keeps some memory at the top of each heap when freed (`keep_heap_slack`): a 100 KB
message's buffers (its lines, its body, its event JSON) come and go on every message, and
glibc gave the heap's top back to the system at each free and took it again at the next
message, a page fault for every 4 KB touched: the event's JSON dump, 14 us alone, took a
median 68 us in the server, 22 us with the slack (100 KB plain bench: +9-16%).

Process-wide, like the signal handlers: only `App.serve_until_signalled` calls it, never a
server embedded in someone else's process (the tests, the pytest plugin).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

import structlog

log = structlog.get_logger("mailrunner.allocator")

M_MMAP_THRESHOLD = -3
"""mallopt's parameter number in glibc's malloc.h."""
MMAP_THRESHOLD = 128 * 1024
"""glibc's own starting value: buffers above it are mmapped, and now stay so."""
M_TOP_PAD = -2
"""mallopt's parameter number in glibc's malloc.h."""
TOP_PAD = 16 * 1024 * 1024
"""Bytes a heap keeps past its top when freed memory would shrink it (glibc's default: 128 KB,
less than one 100 KB message's buffers). Only chunks under the pinned mmap threshold live
there, and only the pages they touched are resident: a 10 MB message's peak is unchanged."""


def release_large_buffers() -> bool:
    """Pin glibc's mmap threshold; whether it was set (False on other C libraries)."""
    return _mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD, "mmap threshold")


def keep_heap_slack() -> bool:
    """Keep `TOP_PAD` bytes at the top of each heap; whether it was set (False on other C
    libraries)."""
    return _mallopt(M_TOP_PAD, TOP_PAD, "top pad")


def trim_heap() -> bool:
    """Give the heaps' free pages back to the system (glibc's malloc_trim: the slack at each
    heap's top, `TOP_PAD` included, and free pages inside them); whether any went back.
    For a server gone idle: what a burst of large messages left in its heaps is resident
    until then, and counted in the peak of whatever comes next."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """glibc, once: `find_library` runs ldconfig."""
    if platform.libc_ver()[0] != "glibc":
        return None
    path = ctypes.util.find_library("c")
    return None if path is None else ctypes.CDLL(path)


def _mallopt(parameter: int, value: int, name: str) -> bool:
    libc = _glibc()
    if libc is None:
        return False
    if libc.mallopt(parameter, value) != 1:
        log.warning("mallopt refused a setting", setting=name, value=value)
        return False
    return True
