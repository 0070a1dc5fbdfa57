"""Event ids: random UUIDs (version 4) from a pool of random bytes read in batches.

`uuid.uuid4()` calls `os.urandom` for every id, which lets go of the GIL for the
`getrandom` system call; under load the SMTP loop then waits to take it back behind the
sqlite commit thread and the parse threads (measured: about 0.3 ms per message in the
worst case). One read of `_BATCH` ids' bytes costs the loop that wait once per batch.
"""

from __future__ import annotations

import os

_ID_OCTETS = 16
_BATCH = 256


class _Pool:
    """Random bytes for the next ids; emptied in a forked child, which must not repeat the
    parent's ids."""

    def __init__(self) -> None:
        self.octets = b""
        self.taken = 0

    def empty(self) -> None:
        self.octets = b""
        self.taken = 0

    def next_id(self) -> str:
        if self.taken >= len(self.octets):
            self.octets = os.urandom(_ID_OCTETS * _BATCH)
            self.taken = 0
        start = self.taken
        self.taken += _ID_OCTETS
        octets = bytearray(self.octets[start : self.taken])
        octets[6] = octets[6] & 0x0F | 0x40  # version 4
        octets[8] = octets[8] & 0x3F | 0x80  # the RFC 4122 variant
        hexed = octets.hex()
        return f"{hexed[:8]}-{hexed[8:12]}-{hexed[12:16]}-{hexed[16:20]}-{hexed[20:]}"


_POOL = _Pool()
os.register_at_fork(after_in_child=_POOL.empty)


def event_id() -> str:
    """A new random (version 4) UUID as text, like `str(uuid.uuid4())`; for one thread
    (the event loop) at a time."""
    return _POOL.next_id()
