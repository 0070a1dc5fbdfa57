"""SMTP pool payloads: the event JSON goes out as the context, a decision comes back.

The worker answers with the decision as its context and an empty body: CONTINUE, CLOSE, or
a refusal as the reply JSON a hook answers (`wire/hooks.py`), which the client gets instead
of 250 and the message is not accepted.
"""

from __future__ import annotations

from typing import Final

from mailrunner.wire.errors import BadVerdict
from mailrunner.wire.hooks import Reply, decode_reply

__all__ = [
    "CLOSE",
    "CONTINUE",
    "DECISIONS",
    "decode_decision",
    "decode_delivery_answer",
    "encode_decision",
]

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


def decode_delivery_answer(context: bytes, body: bytes) -> str | Reply:
    """CONTINUE, CLOSE or the worker's refusal; `BadVerdict` for anything else (ACCEPT, a
    hook's answer, included)."""
    decision = decode_decision(context, body)
    if decision is not None:
        return decision
    if body:
        raise BadVerdict(f"an email's answer has an empty body, got {len(body)} bytes")
    return decode_reply(context)
