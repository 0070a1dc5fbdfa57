"""The worker's end of the relay: frames in on stdin, frames out on stdout.

`Worker` is the low-level API (`wait_payload` / `respond` / `error`) that `handle_emails` and
`Consumer` are built on. It answers the server's CONTROL frames itself: the pid handshake and
the stop request, so application code only ever sees payloads.

stdout belongs to the relay. `Worker.from_stdio()` takes the process's file descriptor 1 for
frames and points descriptor 1 and `sys.stdout` at stderr, so a stray `print()`, a C library
writing to fd 1, or a child process inheriting stdout all land in the server log (stderr lines
are logged with the worker's pid) instead of corrupting the frame stream. Anything printed
*before* `from_stdio()` runs still goes to the relay and kills the worker: print to stderr.
stdin is the relay's too: never call `input()` or read `sys.stdin` in a worker.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import IO, ClassVar, Final

from mailrunner.wire.frame import (
    MAX_PAYLOAD,
    Flag,
    Frame,
    control_frame,
    parse_control,
    payload_frame,
    read_frame,
    split_payload,
    write_frame,
)
from mailrunner.wire.protocol import MODE_ENV
from mailrunner.worker.errors import ProtocolError

__all__ = ["MODE_ENV", "Payload", "Worker", "current_mode", "require_mode", "warn"]

_STDOUT_FD: Final = 1
_STDERR_FD: Final = 2


def current_mode() -> str | None:
    """Return which pool started this process ("smtp" or "jobs"), or None outside a pool."""
    return os.environ.get(MODE_ENV) or None


def require_mode(expected: str, api: str) -> None:
    """Fail fast when a worker script meant for one pool was configured for the other.

    Outside a pool (the variable unset, e.g. a script run by hand) nothing is checked.
    """
    mode = current_mode()
    if mode is not None and mode != expected:
        raise ProtocolError(
            f"{api} serves the {expected!r} pool, but {MODE_ENV}={mode!r}: "
            "check smtp.pool.command / jobs.pool.command, or branch on current_mode()"
        )


def warn(message: str) -> None:
    """Write one diagnostic line to stderr, which the server logs with this worker's pid."""
    print(f"mailrunner.worker: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True, repr=False)
class Payload:
    """One request from the server: `context` (metadata or the event) and `body`."""

    context: bytes
    body: bytes

    def __repr__(self) -> str:
        return f"Payload(context=<{len(self.context)} bytes>, body=<{len(self.body)} bytes>)"


class Worker:
    """A blocking relay endpoint over two binary streams.

    Not thread-safe: one thread waits for a payload and answers it before waiting again,
    because the server sends the next payload only after it has read the answer.
    """

    _stdio: ClassVar[Worker | None] = None

    def __init__(
        self, reader: IO[bytes], writer: IO[bytes], *, max_payload: int = MAX_PAYLOAD
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._max_payload = max_payload
        self._stopped = False

    @classmethod
    def from_stdio(cls) -> Worker:
        """Return the process's worker on stdin/stdout, taking stdout away from text output.

        Idempotent: the second call returns the same worker, since stdout can be taken once.
        """
        if Worker._stdio is None:
            Worker._stdio = cls(sys.stdin.buffer, _take_stdout())
        return Worker._stdio

    @property
    def stopped(self) -> bool:
        """True once the server asked this worker to stop or closed the relay."""
        return self._stopped

    def wait_payload(self) -> Payload | None:
        """Block until the next payload; None when the server says stop or closes stdin.

        CONTROL frames are handled here: `{"pid": …}` is answered with this process's pid (the
        first one is the start-up handshake), `{"stop": true}` ends the loop.
        """
        while not self._stopped:
            frame = read_frame(self._reader, self._max_payload)
            if frame is None:
                self._stopped = True
            elif Flag.CONTROL in frame.flags:
                self._handle_control(frame)
            else:
                context, body = split_payload(frame)
                return Payload(context=context, body=body)
        return None

    def respond(self, context: bytes, body: bytes = b"") -> None:
        """Answer the current payload."""
        write_frame(self._writer, payload_frame(context, body))

    def error(self, message: str) -> None:
        """Answer the current payload with a failure (451 on the SMTP path, nack on jobs).

        The whole payload is the message; option 0 = 0 keeps it a valid payload frame too.
        """
        frame = Frame(
            flags=Flag.ERROR | Flag.CODEC_RAW,
            payload=message.encode("utf-8", "replace"),
            options=(0,),
        )
        write_frame(self._writer, frame)

    def _handle_control(self, frame: Frame) -> None:
        command = parse_control(frame)
        if command.get("stop") is True:
            self._stopped = True
        elif "pid" in command:
            write_frame(self._writer, control_frame({"pid": os.getpid()}))
        else:
            warn(f"ignoring unknown CONTROL frame {command!r}")


def _take_stdout() -> IO[bytes]:
    """Move the relay to a private copy of fd 1 and point fd 1 and sys.stdout at stderr."""
    for text_stream in (sys.stdout, sys.__stdout__):
        if text_stream is not None:
            text_stream.flush()
    relay_fd = os.dup(_STDOUT_FD)
    os.dup2(_STDERR_FD, _STDOUT_FD)
    sys.stdout = sys.stderr
    return os.fdopen(relay_fd, "wb")
