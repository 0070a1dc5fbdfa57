"""What a nats node knows of the messages it holds unacknowledged, noted in a file under its
data_dir so that the next process there gives them back at once (docs/jobs.md#nats).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog
from nats.aio.msg import Msg

from mailrunner.files import write_new_file

log = structlog.get_logger("mailrunner.jobs")

State = Literal["leased", "released", "delayed"]
"""Leased until `until`; released (due now); delayed until `until`."""


def _ids(msg: Msg) -> tuple[int, int]:
    """A delivery's stream sequence (its message) and consumer sequence: unique per delivery,
    unlike `num_delivered`, which a consumer restored after a crash can repeat."""
    return msg.metadata.sequence.stream, msg.metadata.sequence.consumer


@dataclass(slots=True)
class Held:
    """One unacknowledged message: `delivery` is the consumer sequence of its latest delivery
    seen here; `until` is on the monotonic clock; `reply` is its ack subject."""

    delivery: int
    state: State
    until: float
    reply: str


class Holdings:
    """`Held` messages by stream sequence, and their note in `path` (between start and stop)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.held: dict[int, Held] = {}
        self._uncounted: dict[int, int] = {}
        self._changed = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None

    def hold(self, msg: Msg, state: State, until: float, *, counted: bool = True) -> None:
        """Note `msg` as held; not `counted`: given back, its next delivery is no attempt."""
        if not counted:
            self.count_out(msg)
        seq, delivery = _ids(msg)
        self.held[seq] = Held(delivery, state, until, msg.reply)
        self._changed.set()

    def current(self, msg: Msg) -> Held | None:
        """What is known of `msg`'s message, if `msg` is its latest delivery."""
        seq, delivery = _ids(msg)
        held = self.held.get(seq)
        return held if held is not None and held.delivery == delivery else None

    def extended(self, held: Held, until: float) -> None:
        held.until = until
        self._changed.set()

    def forget(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        self.held.pop(seq, None)
        self._uncounted.pop(seq, None)
        self._changed.set()

    def clear(self) -> None:
        self.held.clear()
        self._uncounted.clear()
        self._changed.set()

    def count_out(self, msg: Msg) -> None:
        """The next delivery of `msg`'s message is not an attempt: `msg` is given back uncounted."""
        seq = msg.metadata.sequence.stream
        self._uncounted[seq] = self._uncounted.get(seq, 0) + 1

    def uncounted(self, msg: Msg) -> int:
        return self._uncounted.get(msg.metadata.sequence.stream, 0)

    async def left_behind(self) -> list[str]:
        """The reply subjects of the leases a killed process left that have not expired."""
        try:
            noted = json.loads(await asyncio.to_thread(self.path.read_bytes))
            now = time.time()
            return [reply for reply, expiry in noted.items() if float(expiry) > now]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, TypeError, AttributeError) as error:
            log.warning("unreadable nats lease file", path=str(self.path), error=str(error))
            return []

    def start(self) -> None:
        self._changed = asyncio.Event()  # of this event loop
        self._writer = asyncio.create_task(self._write_changes())
        self._changed.set()

    async def stop(self) -> None:
        """Stop writing and remove the file: nothing is left behind by a close."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        self._changed.set()
        await writer  # ends after the write in progress: none may follow the unlink
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self.path.unlink)

    async def _write_changes(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            if self._writer is None:
                return
            wall = time.time() - time.monotonic()
            leased = {h.reply: wall + h.until for h in self.held.values() if h.state == "leased"}
            try:
                await asyncio.to_thread(_replace, self.path, json.dumps(leased).encode())
            except OSError as error:
                log.warning("cannot note nats leases", path=str(self.path), error=str(error))


def _replace(path: Path, content: bytes) -> None:
    """Write `content` to `path` through a rename, so a kill never leaves half a file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)  # left by a kill
    write_new_file(temporary, content)
    os.replace(temporary, path)
