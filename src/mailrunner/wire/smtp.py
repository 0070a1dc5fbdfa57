"""SMTP pool payloads: the event JSON goes out as the context, a decision comes back.

The worker answers with the decision as its context and an empty body.
"""

from __future__ import annotations

from typing import Final

__all__ = ["CLOSE", "CONTINUE", "DECISIONS", "decode_decision", "encode_decision"]

CONTINUE: Final = "CONTINUE"
"""Keep the SMTP connection open: the client gets 250 and may send more mail."""
CLOSE: Final = "CLOSE"
"""The client gets 250, then 221, and the connection closes."""

DECISIONS: Final = frozenset({CONTINUE, CLOSE})


def encode_decision(decision: str) -> bytes:
    """The answer context for `decision`; ValueError for anything but CONTINUE or CLOSE."""
    if decision not in DECISIONS:
        raise ValueError(f"decision must be CONTINUE or CLOSE, got {decision!r}")
    return decision.encode("ascii")


def decode_decision(context: bytes, body: bytes) -> str | None:
    """The decision a worker answered, or None when the answer is not exactly one."""
    if body:
        return None
    decision = context.decode("ascii", "replace")
    return decision if decision in DECISIONS else None
