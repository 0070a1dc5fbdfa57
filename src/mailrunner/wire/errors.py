"""The wire's exceptions, outside `mailrunner.errors` because worker processes import the wire.

    WireError
     ├── FrameError          BadChecksum, BadVersion, FrameTooLarge, TruncatedFrame (frame.py)
     ├── BadContext          a job or hook context that is not the JSON object the server writes
     └── BadVerdict          a hook answer that is neither ACCEPT nor a 4xx/5xx reply (hooks.py)

Each side turns them into its own tree at its edge: the pool into `WorkerCrashed` (the worker
is replaced), the worker SDK into `ProtocolError`. A `BadVerdict` comes from a sound frame, so
the pool keeps that worker.
"""

from __future__ import annotations

__all__ = ["BadContext", "BadVerdict", "WireError"]


class WireError(Exception):
    """Bytes on the relay that the protocol does not allow."""


class BadContext(WireError):
    """A job context the worker cannot read; the message names the field."""


class BadVerdict(WireError):
    """A worker's answer to a hook (or its reply to an email) that is no verdict the protocol
    allows: the frame was sound, so the worker stays; the command gets the hook error reply."""
