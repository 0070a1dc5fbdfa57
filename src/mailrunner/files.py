"""Files and folders this server creates are private to its user unless configured otherwise.

Mail is personal data and the data directory holds credentials captured by AUTH, so modes
are set exactly: the process umask (often 022, world-readable) must not decide who can read
them. `mkdir`/`open` apply the umask to the mode they are given, hence the `chmod` after.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

PRIVATE_DIRECTORY = 0o700
PRIVATE_FILE = 0o600

NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
"""Open flags for a file that must not exist yet: O_EXCL and O_NOFOLLOW make a file or
symlink planted at its name fail the open instead of being written through."""


def create_directories(path: Path, mode: int = PRIVATE_DIRECTORY) -> None:
    """Create `path` and its missing parents with exactly `mode`.

    Folders that already exist keep their mode: a `temp_dir` such as /tmp, or a data
    directory whose owner chose its permissions, is not ours to change.
    """
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, mode)
        except FileExistsError:
            continue  # created meanwhile by another process or thread: its mode stays
        os.chmod(folder, mode)


def create_directory(path: Path, mode: int = PRIVATE_DIRECTORY) -> None:
    """Create one new folder with exactly `mode`; raises FileExistsError if anything is there,
    so the caller knows every byte inside it was written by itself."""
    os.mkdir(path, mode)
    os.chmod(path, mode)


def write_new_file(path: Path, content: bytes, mode: int = PRIVATE_FILE) -> None:
    """Write a file that must not exist yet (`NEW_FILE`), with exactly `mode`, and fsync it."""
    write_new_pieces(path, (content,), mode)


def write_new_pieces(destination: Path, pieces: Iterable[bytes], mode: int = PRIVATE_FILE) -> None:
    """`write_new_file` for content that comes in pieces (a copy, an attachment decoded from
    the spool file), so it is never whole in memory. A failed write removes the file."""
    descriptor = os.open(destination, NEW_FILE, mode)
    try:
        os.fchmod(descriptor, mode)
        for piece in pieces:
            write_all(descriptor, piece)
        os.fsync(descriptor)
    except BaseException:
        os.close(descriptor)
        destination.unlink(missing_ok=True)
        raise
    os.close(descriptor)


def write_all(descriptor: int, data: bytes | bytearray) -> None:
    """`os.write` until every byte is written (a write may take only part of its buffer)."""
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view) :]


def fsync_directory(folder: Path) -> None:
    """Make the names created in `folder` survive a crash (a file's fsync does not)."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
