"""The server's end of the relay: goridge frames over one child's stdin and stdout.

Anything unexpected on the stream (a bad CRC, a cut frame, an absurd length, EOF) is an
error for this one worker: the pool kills and replaces it, and no other worker notices.
"""

from __future__ import annotations

import asyncio

from mailrunner.errors import WorkerCrashed
from mailrunner.wire.frame import (
    HEADER_SIZE,
    Frame,
    TruncatedFrame,
    build,
    encode_header,
    parse_header,
)


class ProcessRelay:
    """Sends and receives whole frames; one request is in flight at a time."""

    def __init__(
        self, stdin: asyncio.StreamWriter, stdout: asyncio.StreamReader, max_payload: int
    ) -> None:
        self._stdin = stdin
        self._stdout = stdout
        self._max_payload = max_payload

    async def send(self, frame: Frame) -> None:
        """Write a frame; the payload is written as is, without copying it into the header.
        WorkerCrashed once the relay is closed: asyncio drops such a write, uvloop raises."""
        if self._stdin.is_closing():
            raise WorkerCrashed("the relay to this worker is closed")
        try:
            self._stdin.write(encode_header(frame))
            self._stdin.write(frame.payload)
            await self._stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as error:
            raise WorkerCrashed(f"worker stopped reading its stdin: {error}") from error

    async def receive(self) -> Frame:
        """Read one frame; raises FrameError for garbage and WorkerCrashed for EOF."""
        header_bytes = await self._read(HEADER_SIZE, "header", at_boundary=True)
        header = parse_header(header_bytes, self._max_payload)
        rest = await self._read(header.remaining, "payload", at_boundary=False)
        return build(header, rest)

    async def _read(self, size: int, part: str, *, at_boundary: bool) -> bytes:
        try:
            return await self._stdout.readexactly(size)
        except asyncio.IncompleteReadError as error:
            if at_boundary and not error.partial:
                raise WorkerCrashed("worker closed its stdout (it exited or crashed)") from None
            got = len(error.partial)
            raise TruncatedFrame(
                f"worker stdout ended inside a frame {part}: got {got} of {size} bytes"
            ) from None

    def close(self) -> None:
        if not self._stdin.is_closing():
            self._stdin.close()
