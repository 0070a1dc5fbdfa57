"""Where attachment bytes go: into the event as base64, or into files the event points at.

`tempfile` mode keeps multi-megabyte attachments out of the event (and out of the queue);
files are fsynced before the event is handed on, because a consumer may read them after a
crash of this server. `auto` (claim-check) does so only for messages over
`claim_check_bytes`, and keeps their raw message (when the event carries it) in the same
folder as RAW_FILE, the spool file itself where the message was spooled: a big message is
a small job, and whatever removes the folder removes all of it. Paths come only from this
server: folders are named by event ids it generated, and one is deleted only when
`ownership` finds this server's marker in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import re
import shutil
import stat
import time
import uuid
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from mailrunner.errors import StorageError
from mailrunner.events import Attachment
from mailrunner.files import (
    PRIVATE_DIRECTORY,
    create_directories,
    create_directory,
    fsync_directory,
    write_new_file,
    write_new_pieces,
)
from mailrunner.mime.parse import ParsedPart
from mailrunner.smtp.spool import MessageContent
from mailrunner.tasks import cancel_and_wait

log = structlog.get_logger("mailrunner.attachments")

_UNSAFE = re.compile(r"[^\w.+@-]+")


@dataclass(frozen=True, slots=True)
class Stored:
    """What the event carries of a message's attachments and raw bytes: the raw message in
    the event (`raw`), as a file (`raw_path`), or not at all (neither)."""

    attachments: tuple[Attachment, ...]
    raw: bytes | None = None
    raw_path: str | None = None


class AttachmentStorage(Protocol):
    """Turns the parser's attachment parts (and the raw message) into what the event carries.

    `store` and `store_message` are all or nothing: when one raises or is cancelled, nothing
    it wrote is left.
    """

    async def store(
        self, event_id: str, attachments: Sequence[ParsedPart]
    ) -> tuple[Attachment, ...]: ...

    async def store_message(
        self,
        event_id: str,
        attachments: Sequence[ParsedPart],
        content: MessageContent,
        include_raw: bool,
    ) -> Stored:
        """The attachments, and the raw message `content` when the event carries it
        (`include_raw`), as this storage keeps a message of its size (always known, even
        without `include_raw`: it decides the claim-check)."""

    def claim_checks(self, size: int) -> bool:
        """Whether a message of `size` octets has its attachments stored as files (the
        parse may then leave their bodies in the spool file: `ParsedPart.body`)."""


async def _inline_raw(content: MessageContent, include_raw: bool) -> bytes | None:
    """The raw bytes for the event itself; a spooled message is read whole on a thread."""
    if not include_raw or content.data is not None:
        return content.data if include_raw else None
    return await asyncio.to_thread(content.read_all)


def _carried(
    part: ParsedPart, *, content: bytes | None = None, path: str | None = None
) -> Attachment:
    """The event's account of `part`, its bytes inline (`content`) or in the file at `path`."""
    return Attachment(
        part.filename, part.content_type, part.size, part.content_id, part.inline, content, path
    )


class MemoryStorage:
    """Attachments travel inside the event (as base64 in its JSON)."""

    async def store(
        self, event_id: str, attachments: Sequence[ParsedPart]
    ) -> tuple[Attachment, ...]:
        if any(part.body is not None for part in attachments):
            contents = await asyncio.to_thread(lambda: [part.read() for part in attachments])
        else:
            contents = [part.content for part in attachments]
        return tuple(
            _carried(part, content=content)
            for part, content in zip(attachments, contents, strict=True)
        )

    def claim_checks(self, size: int) -> bool:
        return False

    async def store_message(
        self,
        event_id: str,
        attachments: Sequence[ParsedPart],
        content: MessageContent,
        include_raw: bool,
    ) -> Stored:
        return Stored(
            await self.store(event_id, attachments), await _inline_raw(content, include_raw)
        )


NAME_MAX = 255
"""Bytes in one file name on Linux file systems: a longer name cannot be created at all, so
the message would get 451 on every retry."""
_KEPT_SUFFIX = 32
"""A cut name keeps an extension up to this many bytes: consumers often go by it."""


def safe_filename(filename: str | None, index: int) -> str:
    """A filename is data, never a path: keep a readable name without separators.

    The name is cut to NAME_MAX bytes of UTF-8 (120 CJK characters are 360 bytes), on a
    character boundary. It always starts with `NNN-`, so it is never a dot file like
    OWNER_MARK or PIPELINE_MARK.
    """
    stem = _UNSAFE.sub("_", os.path.basename((filename or "").replace("\\", "/")))
    prefix = f"{index:03d}-"
    return prefix + (_fit(stem.strip("._"), NAME_MAX - len(prefix)) or "attachment")


def _fit(name: str, limit: int) -> str:
    if len(name.encode("utf-8")) <= limit:
        return name
    stem, suffix = os.path.splitext(name)
    if len(suffix.encode("utf-8")) > _KEPT_SUFFIX:
        stem, suffix = name, ""
    kept = stem.encode("utf-8")[: limit - len(suffix.encode("utf-8"))]
    return kept.decode("utf-8", "ignore") + suffix  # "ignore" drops only a cut last character


OWNER_MARK = ".mailrunner"
"""A file in each event folder naming the event id it was written for. Only a folder holding
it is ever deleted: job ids reach this server from anyone who can push a job, so an id is
never trusted to name a folder by itself."""

PIPELINE_MARK = ".pipeline"
"""A file in each event folder written on the Jobs path, naming (one a line) every pipeline
the email's jobs went to, the inbox's aside: the folder goes once each of them is done with
it (`release`), and destroying one with purge finds its folders this way, since not every
driver can list the jobs it holds. Age-based cleanup (worker-pool path) leaves folders
holding it alone."""
RAW_FILE = "message.eml"
"""The raw message's file in a claim-checked event folder: attachment files are named
`NNN-...` (`safe_filename`) and marks start with a dot, so it is never one of theirs."""
RELEASE_MARK = ".released."
"""Prefix of the files `release` writes, one per pipeline done with the folder, named by the
pipeline's line in PIPELINE_MARK: an exclusive create each, so releases running at once in
threads never lose one, and a pipeline whose job is removed twice counts once."""

_MARK_LIMIT = 64 * 1024


class Ownership(enum.Enum):
    """What stands at `<directory>/<id>`, as far as deleting it is concerned."""

    OURS = "an event folder this server wrote for that id"
    ABSENT = "nothing"
    NOT_AN_EVENT_ID = "the id is not an event id (a UUID)"
    NOT_A_DIRECTORY = "not a real directory (a symlink or a file)"
    UNMARKED = f"a directory without a {OWNER_MARK} marker naming the id"


def ownership(directory: Path, event_id: str) -> Ownership:
    """The one decision of whether `<directory>/<event_id>` may be deleted (only if OURS).

    The id is checked before any path is built from it, so `../x` or `/abs` never reach the
    file system; a canonical UUID cannot leave `directory`.
    """
    if not _is_event_id(event_id):
        return Ownership.NOT_AN_EVENT_ID
    folder = directory / event_id
    try:
        info = os.lstat(folder)
    except FileNotFoundError:
        return Ownership.ABSENT
    if not stat.S_ISDIR(info.st_mode):
        return Ownership.NOT_A_DIRECTORY
    if _read_mark(folder / OWNER_MARK) != event_id:
        return Ownership.UNMARKED
    return Ownership.OURS


def _is_event_id(name: str) -> bool:
    """Event ids are `str(uuid4())`: only that canonical spelling counts."""
    try:
        return str(uuid.UUID(name)) == name
    except ValueError:
        return False


def _read_mark(path: Path) -> str | None:
    """A mark's text; None unless it is a regular file (not a symlink, FIFO or device)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            return None
        return os.read(descriptor, _MARK_LIMIT).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    finally:
        os.close(descriptor)


def _looks_like_a_path(job_id: str) -> bool:
    return job_id in {".", ".."} or any(character in job_id for character in "/\\\0")


def folder_mode(file_mode: int) -> int:
    """Event folders are private, except that whoever may read the files (group or others in
    `file_mode`, for consumers under another uid) may also enter the folder."""
    readers = file_mode & 0o044
    return PRIVATE_DIRECTORY | readers | readers >> 2


class TempfileStorage:
    """Attachments are written under `<directory>/<event id>/` and the event carries paths.

    Each folder holds OWNER_MARK; `pipelines` are where this server pushes its emails' jobs
    (Jobs path only, the inbox's aside: the inbox keeps its own copy; one name or several),
    and each folder is marked with them too. Files get exactly `file_mode`.

    With `claim_check_bytes` (mode `auto`), a message up to that size is kept as
    `MemoryStorage` keeps it; a larger one has its attachments and its raw message stored
    here (`store_message`). Without it (mode `tempfile`), attachments always are, and the raw
    message stays in the event.
    """

    def __init__(
        self,
        directory: Path,
        pipelines: str | Sequence[str] | None = None,
        *,
        file_mode: int,
        claim_check_bytes: int | None = None,
    ) -> None:
        self.directory = directory.resolve()
        self._pipelines = [pipelines] if isinstance(pipelines, str) else pipelines
        self._file_mode = file_mode
        self._folder_mode = folder_mode(file_mode)
        self.claim_check_bytes = claim_check_bytes

    async def store_message(
        self,
        event_id: str,
        attachments: Sequence[ParsedPart],
        content: MessageContent,
        include_raw: bool,
    ) -> Stored:
        """As `store`, the raw message too (as RAW_FILE, with `include_raw`) when the message
        is claim-checked; a message at most `claim_check_bytes` long is left in the event
        whole, and in `tempfile` mode the raw message always is."""
        if self.claim_check_bytes is None:
            inline = await _inline_raw(content, include_raw)
            return Stored(await self.store(event_id, attachments), inline)
        if not self.claim_checks(content.size):
            return await MemoryStorage().store_message(event_id, attachments, content, include_raw)
        raw = content if include_raw else None
        stored = await self._store(event_id, attachments, raw)
        raw_path = None if raw is None else str(self.directory / event_id / RAW_FILE)
        return Stored(stored, raw_path=raw_path)

    def claim_checks(self, size: int) -> bool:
        """Whether a message of `size` octets has its attachments stored here."""
        return self.claim_check_bytes is None or size > self.claim_check_bytes

    def raw_file(self, event_id: str) -> Path | None:
        """The raw message of a claim-checked event this server stored, None when there is
        none. Only a folder this server wrote for `event_id` is read (`ownership`): the path
        a job names is never trusted, the job's pusher may be anyone."""
        if ownership(self.directory, event_id) is not Ownership.OURS:
            return None
        path = self.directory / event_id / RAW_FILE
        return path if path.is_file() and not path.is_symlink() else None

    async def store(
        self, event_id: str, attachments: Sequence[ParsedPart]
    ) -> tuple[Attachment, ...]:
        """Write every file, or none: a failure removes the event's folder and is raised.
        Whatever the message's size: with `claim_check_bytes` only `store_message`, which
        knows it, tells the two apart."""
        return await self._store(event_id, attachments, None)

    async def _store(
        self, event_id: str, attachments: Sequence[ParsedPart], raw: MessageContent | None
    ) -> tuple[Attachment, ...]:
        if not attachments and raw is None:
            return ()
        writing = asyncio.ensure_future(
            asyncio.to_thread(self._write_all, event_id, attachments, raw)
        )
        try:
            return await asyncio.shield(writing)
        except asyncio.CancelledError:
            await self._take_back(writing, event_id)
            raise
        except OSError as error:
            raise StorageError(f"files of {event_id} in {self.directory}: {error}") from error

    async def _take_back(
        self, writing: asyncio.Future[tuple[Attachment, ...]], event_id: str
    ) -> None:
        """The session was cancelled mid-write (aiosmtpd does so when the client hangs up):
        no job will point at these files. The thread cannot be stopped, so wait for it."""
        await asyncio.wait([writing])
        if writing.exception() is None:
            await asyncio.to_thread(self.remove, event_id)

    def _write_all(
        self, event_id: str, attachments: Sequence[ParsedPart], raw: MessageContent | None
    ) -> tuple[Attachment, ...]:
        if not _is_event_id(event_id):
            raise ValueError(f"attachment folders are named by event ids (UUIDs), not {event_id!r}")
        create_directories(self.directory, self._folder_mode)
        folder = self.directory / event_id
        create_directory(folder, self._folder_mode)
        try:
            stored = self._fill(folder, event_id, attachments, raw)
            fsync_directory(self.directory)  # the folder's own name, or a crash may lose it all
        except BaseException:
            # this call created the folder (an exclusive mkdir), so it is ours to take back
            _delete(folder)
            raise
        return stored

    def _fill(
        self,
        folder: Path,
        event_id: str,
        attachments: Sequence[ParsedPart],
        raw: MessageContent | None,
    ) -> tuple[Attachment, ...]:
        write_new_file(folder / OWNER_MARK, event_id.encode("utf-8"))
        if self._pipelines is not None:
            write_new_file(folder / PIPELINE_MARK, _mark_text(self._pipelines))
        stored = []
        for index, attachment in enumerate(attachments, start=1):
            path = folder / safe_filename(attachment.filename, index)
            if attachment.body is None:
                write_new_file(path, attachment.content, self._file_mode)
            else:  # decoded from the spool file a piece at a time
                # closed at once when a write fails (ENOSPC): left to the garbage collector,
                # the half-read generator would hold the spool file open, its space with it
                pieces = attachment.body.pieces()
                try:
                    write_new_pieces(path, pieces, self._file_mode)
                finally:
                    if isinstance(pieces, Generator):
                        pieces.close()
            stored.append(_carried(attachment, path=str(path)))
        if raw is not None:
            raw.hand_over(folder / RAW_FILE, self._file_mode)  # last: a rename, no failure after
        fsync_directory(folder)
        return tuple(stored)

    def remove(self, event_id: str) -> bool:
        """Delete one event's files (its job was acked or purged, or its push failed).

        The id may come from anyone who can push a job: anything but an event folder this
        server wrote for it is left alone and logged. An email without attachments has no
        folder, which is not worth a line.
        """
        verdict = ownership(self.directory, event_id)
        if verdict is Ownership.OURS:
            return _delete(self.directory / event_id)
        if verdict is not Ownership.ABSENT:
            warn = verdict is not Ownership.NOT_AN_EVENT_ID or _looks_like_a_path(event_id)
            report = log.warning if warn else log.debug
            report("attachment folder left alone", id=repr(event_id), found=verdict.value)
        return False

    def release(self, event_id: str, pipeline: str) -> bool:
        """`pipeline`'s job for the email is gone (acked or purged); the folder goes with
        the last of the pipelines its mark names (at once when it names none). True if it went.

        Each pipeline counts once, however often a job of that id leaves it (delivery is at
        least once: a late ack whose lease had expired, then the redelivery's), and one the
        mark does not name not at all; counted per removal, either would take the files from
        under another pipeline's job. The id is checked as `remove` does; a folder without a
        pipeline mark is left alone.
        """
        if ownership(self.directory, event_id) is not Ownership.OURS:
            return self.remove(event_id)
        folder = self.directory / event_id
        mark = _read_mark(folder / PIPELINE_MARK)
        if mark is None:
            return False
        names = _mark_names(mark)
        try:
            if names:
                if pipeline not in names:
                    return False
                write_new_file(folder / f"{RELEASE_MARK}{names.index(pipeline)}", b"")
            released = sum(name.startswith(RELEASE_MARK) for name in os.listdir(folder))
        except FileExistsError:
            return False  # this pipeline released it before
        except FileNotFoundError:
            return False  # a release running at once deleted it
        return released >= len(names) and _delete(folder)

    def keep_for(self, event_id: str, pipelines: Sequence[str]) -> None:
        """The email's pushes stopped after `pipelines` stored their jobs (the client got
        451): the folder stays for those alone, or goes when there are none."""
        if not pipelines:
            self.remove(event_id)
        elif ownership(self.directory, event_id) is Ownership.OURS:
            mark = self.directory / event_id / PIPELINE_MARK
            mark.unlink(missing_ok=True)
            write_new_file(mark, _mark_text(pipelines))

    def remove_pipeline(self, pipeline: str) -> int:
        """A pipeline destroyed with purge releases the folders marked with it; returns how
        many went (those it was the last pipeline of)."""
        return sum(
            self.release(folder.name, pipeline)
            for folder in self._own_folders()
            if pipeline in _mark_names(_read_mark(folder / PIPELINE_MARK) or "")
        )

    def remove_older_than(self, age: float) -> int:
        """Delete worker-pool event folders not touched for `age` seconds; returns how many."""
        cutoff = time.time() - age
        removed = 0
        for folder in self._own_folders():
            if (folder / PIPELINE_MARK).exists():
                continue  # a Jobs-path folder: it lives until its job is acked
            with contextlib.suppress(FileNotFoundError):
                if os.lstat(folder).st_mtime < cutoff:
                    removed += _delete(folder)
        return removed

    def _own_folders(self) -> list[Path]:
        """The event folders this server wrote; `temp_dir` may be shared (even /tmp), and
        whatever else is there is skipped."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        owned = [
            self.directory / name
            for name in names
            if ownership(self.directory, name) is Ownership.OURS
        ]
        if len(owned) < len(names):
            log.debug(
                "entries not written by mailrunner left alone",
                directory=str(self.directory),
                entries=len(names) - len(owned),
            )
        return owned


def _mark_text(pipelines: Sequence[str]) -> bytes:
    return "".join(f"{name}\n" for name in pipelines).encode("utf-8")


def _mark_names(mark: str) -> list[str]:
    return mark.splitlines()


def _delete(folder: Path) -> bool:
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        return False
    except OSError as error:
        log.warning("attachment folder not removed", path=str(folder), error=str(error))
        return False
    return True


class CleanupTask:
    """Removes attachment folders older than `cleanup_after` (worker-pool path only)."""

    def __init__(self, storage: TempfileStorage, cleanup_after: float) -> None:
        self._storage = storage
        self._cleanup_after = cleanup_after
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="attachment-cleanup")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task, "attachment cleanup")
            self._task = None

    async def _run(self) -> None:
        interval = max(1.0, min(60.0, self._cleanup_after / 2))
        while True:
            removed = await asyncio.to_thread(self._storage.remove_older_than, self._cleanup_after)
            if removed:
                log.info("attachments removed", folders=removed, older_than=self._cleanup_after)
            await asyncio.sleep(interval)
