"""A message's octets after DATA: the reader's buffer, or a file in this process's spool.

DATA beyond `smtp.spool_bytes` goes to a file as it arrives, so a large message costs the
in-flight memory budget only the reader's chunk, not its size. The file lives until the
reply to DATA is decided, whatever it is: the SMTP session removes it.

Each process spools into `<data_dir>/spool/<pid>/`, so processes sharing a data directory
never touch each other's files. At start a process empties the folder of its own pid (left
by a crashed process that had the same pid: in a container the server is always the same
pid, so a restart cleans up). Folders of other pids stay: whether such a process is alive
cannot be told from here when the data directory is shared between hosts or containers (pid
namespaces), so they are only named in the log, for the operator to remove.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import structlog

from mailrunner.files import PRIVATE_DIRECTORY, PRIVATE_FILE, create_directories

log = structlog.get_logger("mailrunner.smtp")

SPOOL_FOLDER = "spool"
"""The spool's folder inside `data_dir`; one folder per process below it."""
READ_CHUNK = 256 * 1024
"""What `MessageContent.read_chunks` hands out at a time from a spool file."""

_NEW_SPOOL_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
"""O_EXCL and O_NOFOLLOW: a file or symlink planted at the name fails the open instead of
being written through."""


@dataclass(frozen=True, slots=True)
class MessageContent:
    """One message's octets (transparency dots removed): `data` in memory, or the spool file
    at `path`. Reading a spooled message blocks: do it on a thread."""

    size: int
    data: bytes | None = None
    path: Path | None = None

    @classmethod
    def in_memory(cls, data: bytes) -> MessageContent:
        return cls(size=len(data), data=data)

    def read_all(self) -> bytes:
        """The whole message, for what needs it whole (the event's `raw`, the inbox)."""
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()

    def read_chunks(self, chunk: int = READ_CHUNK) -> Iterator[bytes]:
        """The message piece by piece, never holding a spooled message whole."""
        if self.data is not None:
            view = memoryview(self.data)
            for start in range(0, len(view), chunk):
                yield bytes(view[start : start + chunk])
            return
        assert self.path is not None
        with self.path.open("rb") as file:
            while piece := file.read(chunk):
                yield piece


class SpoolFile:
    """One message being written to the spool; every call but `finish` runs on the spool's
    thread, in the order they were made.

    Nothing is fsynced: a message is only answered 250 once its event is stored elsewhere, so
    a crash loses nothing acknowledged.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._descriptor: int | None = None

    def write(self, data: bytes | bytearray) -> None:
        """Append `data`, creating the file (0600) on the first call; raises OSError (ENOSPC,
        EFBIG, EIO...) with the file left to `remove()`."""
        if self._descriptor is None:
            self._descriptor = os.open(self.path, _NEW_SPOOL_FILE, PRIVATE_FILE)
            os.fchmod(self._descriptor, PRIVATE_FILE)
        view = memoryview(data)
        while view:
            view = view[os.write(self._descriptor, view) :]
        self.size += len(data)

    def finish(self) -> MessageContent:
        """Close the file (no write pending); its content is the message until `remove()`."""
        self._close()
        return MessageContent(size=self.size, path=self.path)

    def remove(self) -> None:
        """Close and delete; a reader that opened the file meanwhile still reads it whole."""
        self._close()
        self.path.unlink(missing_ok=True)

    def _close(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None


class Spool:
    """This process's spool folder, the threshold beyond which DATA goes there, and the one
    thread that writes and removes its files.

    Not on the event loop: a 256 KiB write into the page cache takes 60 µs, but writeback
    throttling stalled single writes up to 36 ms (p99 12-16 ms) on this project's shared
    test machine, writing ten 10 MB files at once, and that would stall every session. One
    thread, so a file's writes and its removal run in the order the session made them, and a
    file is never closed under a write.
    """

    def __init__(self, data_dir: Path, threshold: int) -> None:
        self.threshold = threshold
        self.folder = data_dir / SPOOL_FOLDER / str(os.getpid())
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="spool")
        self._stopped: asyncio.Future[None] | None = None

    async def write(self, file: SpoolFile, data: bytes | bytearray) -> None:
        """`file.write(data)` on the spool's thread; OSError once the spool is stopped."""
        if self._stopped is not None:
            raise OSError(errno.ESHUTDOWN, "the spool is stopped")
        await self._run(file.write, data)

    async def discard(self, file: SpoolFile) -> None:
        """`file.remove()` after the writes before it; once the spool is stopped (a session
        the server aborted ends after it), here, when the thread has done all it was given."""
        if self._stopped is None:
            await self._run(file.remove)
            return
        await asyncio.shield(self._stopped)
        file.remove()

    async def _run(self, function: Callable[..., None], *args: object) -> None:
        # shielded: cancelling the wrapper would cancel a call still queued (a removal)
        await asyncio.shield(asyncio.wrap_future(self._thread.submit(function, *args)))

    def prepare(self) -> None:
        """Create the folder (0700) empty, removing what a process with this pid left;
        blocking, called once at start."""
        create_directories(self.folder.parent)
        shutil.rmtree(self.folder, ignore_errors=True)
        create_directories(self.folder, PRIVATE_DIRECTORY)
        others = sorted(p.name for p in self.folder.parent.iterdir() if p != self.folder)
        if others:
            log.info(
                "spool folders of other processes left alone",
                folder=str(self.folder.parent),
                pids=others,
            )

    def new_file(self) -> SpoolFile:
        """A file for one message, made by its first write."""
        return SpoolFile(self.folder / uuid.uuid4().hex)

    async def stop(self) -> None:
        """Let the thread finish, then remove the folder and anything left in it; called once
        at stop, after the SMTP server."""
        self._stopped = asyncio.get_running_loop().run_in_executor(None, self._thread.shutdown)
        await self._stopped
        await asyncio.to_thread(shutil.rmtree, self.folder, ignore_errors=True)
