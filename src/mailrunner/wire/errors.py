"""The wire's exceptions, outside `mailrunner.errors` because worker processes import the wire.

    WireError
     ├── FrameError          BadChecksum, BadVersion, FrameTooLarge, TruncatedFrame (frame.py)
     └── BadContext          a job context that is not the JSON object the server writes

Each side turns them into its own tree at its edge: the pool into `WorkerCrashed` (the worker
is replaced), the worker SDK into `ProtocolError`.
"""

from __future__ import annotations

__all__ = ["BadContext", "WireError"]


class WireError(Exception):
    """Bytes on the relay that the protocol does not allow."""


class BadContext(WireError):
    """A job context the worker cannot read; the message names the field."""
