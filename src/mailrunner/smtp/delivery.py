"""The seam between the SMTP side and whatever receives events.

The handler sees only `Delivery.deliver(event) -> Outcome`; failures raise errors from
`mailrunner.errors` and the handler turns them into 451 in one place.
"""

from __future__ import annotations

import asyncio
import enum
from pathlib import Path
from typing import Protocol

from mailrunner.events import EmailEvent


class Outcome(enum.Enum):
    ACCEPTED = "accepted"
    ACCEPTED_CLOSE = "accepted_close"


class Delivery(Protocol):
    """Hands one event on; returns only once the event is safe where it went."""

    async def deliver(self, event: EmailEvent) -> Outcome: ...


class JsonLinesDelivery:
    """Appends each event as one JSON line to a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def deliver(self, event: EmailEvent) -> Outcome:
        await asyncio.to_thread(self._append, event.to_json() + b"\n")
        return Outcome.ACCEPTED

    def _append(self, line: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as handle:
            handle.write(line)
