"""The leases a nats node holds, noted in a file under its data_dir, so that after a kill -9
the process that starts next on that data_dir gives them back at once (`nak`) instead of
leaving their jobs unserved for the whole visibility timeout.

Why a local file: JetStream cannot list a consumer's unacknowledged messages, but any
connection may answer a delivery's ack subject, so the reply subjects are all a restart
needs, and only this node needs them. A file costs no broker round trip on the lease path and
outlives what must be outlived: the process, not the machine (written without fsync).

It is a snapshot of the held leases, rewritten in the background (write, then rename) soon
after they change, so it can be a moment behind: a lease taken just before the kill may be
missing (it waits out its timeout, as before), one acked just before may be listed (the
server ignores a nak of a message it no longer holds). Only leases whose noted expiry (wall
clock, measured from before the pull, so never later than the server's) is still ahead are
nakked: until then the server cannot have given the message to another consumer. The
redelivery counts one attempt, the dead node's, as a lease expiry would: the nak adds none.
A driver that closes removes its file: the leases of a closed driver expire as the driver
contract says.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from mailrunner.files import PRIVATE_FILE

log = structlog.get_logger("mailrunner.jobs")

Snapshot = Callable[[], dict[str, float]]
"""The leases held now: reply subject -> wall-clock expiry."""

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


class LeaseFile:
    """`path`, kept equal to `snapshot()` by a writer task between `start` and `stop`."""

    def __init__(self, path: Path, snapshot: Snapshot) -> None:
        self.path = path
        self._snapshot = snapshot
        self._changed = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None

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
        self.changed()

    def changed(self) -> None:
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
            content = json.dumps(self._snapshot()).encode()
            try:
                await asyncio.to_thread(_replace, self.path, content)
            except OSError as error:
                log.warning("cannot note nats leases", path=str(self.path), error=str(error))


def _replace(path: Path, content: bytes) -> None:
    """Write `content` to `path` through a rename, so a kill never leaves half a file."""
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, _CREATE, PRIVATE_FILE)
    try:
        os.fchmod(descriptor, PRIVATE_FILE)
        view = memoryview(content)
        while view:
            view = view[os.write(descriptor, view) :]
    finally:
        os.close(descriptor)
    os.replace(temporary, path)
