"""A message's octets after DATA: the reader's buffer, or a file in this process's spool.

DATA beyond `smtp.spool_bytes` goes to a file as it arrives, so a large message costs the
in-flight memory budget only the reader's chunk, not its size. The file lives until the
reply to DATA is decided, whatever it is: the SMTP session removes it, unless it was handed
over first (`MessageContent.hand_over`: renamed where something keeps the bytes, the
claim-check's event folder), in which case the removal leaves it alone.

Each process spools into `<data_dir>/spool/<pid>/`, so processes sharing a data directory
never touch each other's files. At start a process empties the folder of its own pid (left
by a crashed process that had the same pid: in a container the server is always the same
pid, so a restart cleans up). Folders of other pids stay: whether such a process is alive
cannot be told from here when the data directory is shared between hosts or containers (pid
namespaces), so they are only named in the log, for the operator to remove. Two live
processes with one pid (two containers sharing a data directory) are told apart by a lock
on the folder: the second takes `<pid>.1/` (then `.2`...), the first free one, so neither
empties the other's folder.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import itertools
import os
import shutil
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from mailrunner.files import (
    NEW_FILE,
    PRIVATE_DIRECTORY,
    PRIVATE_FILE,
    create_directories,
    write_all,
    write_new_file,
    write_new_pieces,
)

log = structlog.get_logger("mailrunner.smtp")

SPOOL_FOLDER = "spool"
"""The spool's folder inside `data_dir`; one folder per process below it."""
COPY_CHUNK = 1024 * 1024
"""What a copy of a spool file (`temp_dir` on another file system) reads at a time."""


@dataclass(frozen=True, slots=True)
class MessageContent:
    """One message's octets (transparency dots removed): `data` in memory, or the spool file
    at `path`. Reading a spooled message blocks: do it on a thread."""

    size: int
    data: bytes | None = None
    path: Path | None = None
    spooled: SpoolFile | None = field(default=None, compare=False, repr=False)
    """The spool file `path` is, told when the file is handed over."""

    @classmethod
    def in_memory(cls, data: bytes) -> MessageContent:
        return cls(size=len(data), data=data)

    def read_all(self) -> bytes:
        """The whole message, for what needs it whole (the event's `raw`, the inbox)."""
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()

    def hand_over(self, destination: Path, mode: int) -> None:
        """Make `destination` (which must not exist) hold the message with exactly `mode`,
        the file fsynced (the caller fsyncs `destination`'s folder once, with its other files);
        blocking, run it on a thread.

        A spooled message's file is renamed there, not copied, and the spool's removal after
        the reply then leaves it alone; only when `destination` is on another file system
        (EXDEV) is it copied, the spool file left to that removal. A message in memory is
        written out.
        """
        if self.path is None:
            assert self.data is not None
            write_new_file(destination, self.data, mode)
            return
        if self.spooled is not None and self.spooled.take(destination, mode):
            return
        _copy_new(self.path, destination, mode)


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
        self._handed_over = False

    def write(self, data: bytes | bytearray) -> None:
        """Append `data`, creating the file (0600) on the first call; raises OSError (ENOSPC,
        EFBIG, EIO...) with the file left to `remove()`."""
        if self._descriptor is None:
            self._descriptor = os.open(self.path, NEW_FILE, PRIVATE_FILE)
            os.fchmod(self._descriptor, PRIVATE_FILE)
        write_all(self._descriptor, data)
        self.size += len(data)

    def finish(self) -> MessageContent:
        """Close the file (no write pending); its content is the message until `remove()`."""
        self._close()
        return MessageContent(size=self.size, path=self.path, spooled=self)

    def take(self, destination: Path, mode: int) -> bool:
        """Rename the finished file to `destination` (no file there: a hard link, then the
        spool's name removed, so nothing planted there is replaced) with exactly `mode`,
        fsynced; False, the file left here, when `destination` is on another file system.
        From then on `remove()` does nothing: the file is no longer the spool's."""
        descriptor = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(descriptor, mode)
            os.fsync(descriptor)  # a consumer may read it after a crash of this server
        finally:
            os.close(descriptor)
        try:
            os.link(self.path, destination)  # unlike rename, never replaces what is there
        except OSError as error:
            if error.errno not in _NO_LINK:
                raise
            return False
        os.unlink(self.path)  # should this fail, `remove()` still removes the spool's name
        self._handed_over = True
        return True

    def remove(self) -> None:
        """Close and delete, unless handed over; a reader that opened the file meanwhile still
        reads it whole."""
        self._close()
        if not self._handed_over:
            self.path.unlink(missing_ok=True)

    def _close(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None


_NO_FLOCK = frozenset({errno.ENOLCK, errno.EBADF, errno.EOPNOTSUPP, errno.EINVAL})
"""Why a folder cannot be flocked where the file system lacks it: the spool then goes
unlocked, as before locks (two live processes with one pid would share its folder)."""
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP})
"""Why a spool file cannot become the destination's name: another file system (`temp_dir`
elsewhere), or one without hard links. The message is copied then."""


def _copy_new(source: Path, destination: Path, mode: int) -> None:
    """Copy `source` to a new file with exactly `mode`, fsynced; a piece at a time, never the
    whole message in memory."""
    with source.open("rb") as file:
        write_new_pieces(destination, iter(lambda: file.read(COPY_CHUNK), b""), mode)


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
        self._lock: int | None = None
        """The folder's descriptor, flocked while this process spools there."""

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
        base = self.folder
        for attempt in itertools.count(1):
            self._lock = _locked_folder(self.folder)
            if self._lock is not None:
                break
            self.folder = base.with_name(f"{base.name}.{attempt}")  # a live namesake's
        for entry in os.scandir(self.folder):  # emptied, not replaced: the lock is on it
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                Path(entry.path).unlink(missing_ok=True)
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
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def _locked_folder(folder: Path) -> int | None:
    """`folder` (created 0700 if missing) open and exclusively flocked, or None when a live
    process holds it. A folder removed by its previous holder between our open and our lock
    is made again, so the lock is always on the folder at that name."""
    while True:
        create_directories(folder, PRIVATE_DIRECTORY)
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return None
        except OSError as error:  # a file system without flock on folders (NFS emulates it)
            if error.errno not in _NO_FLOCK:
                os.close(descriptor)
                raise
            log.warning("spool folder not locked", folder=str(folder), reason=str(error))
        try:
            same = os.path.samestat(os.fstat(descriptor), os.lstat(folder))
        except FileNotFoundError:
            same = False
        if same:
            return descriptor
        os.close(descriptor)
