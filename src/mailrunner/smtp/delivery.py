"""The seam between the SMTP side and whatever receives events.

The handler sees only `Delivery.deliver(event) -> Outcome`; failures raise errors from
`mailrunner.errors` and the handler turns them into 451 in one place.
"""

from __future__ import annotations

import asyncio
import enum
from pathlib import Path
from typing import ClassVar, Protocol

from mailrunner.errors import BadAnswer
from mailrunner.events import EmailEvent
from mailrunner.pool.pool import WorkerPool


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


class PoolDelivery:
    """The legacy path: the session waits while a worker process handles the event."""

    ANSWERS: ClassVar[dict[bytes, Outcome]] = {
        b"CONTINUE": Outcome.ACCEPTED,
        b"CLOSE": Outcome.ACCEPTED_CLOSE,
    }

    def __init__(self, pool: WorkerPool) -> None:
        self._pool = pool

    async def deliver(self, event: EmailEvent) -> Outcome:
        context, _ = await self._pool.exec(event.to_json())
        outcome = self.ANSWERS.get(context)
        if outcome is None:
            raise BadAnswer(f"worker answered {context[:40]!r}, expected CONTINUE or CLOSE")
        return outcome
