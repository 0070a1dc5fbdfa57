"""Where attachment bytes go: into the event as base64, or into files the event points at.

`tempfile` mode keeps multi-megabyte attachments out of the event (and out of the queue);
files are fsynced before the event is handed on, because a consumer may read them after a
crash of this server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import structlog

from mailrunner.events import StoredAttachment
from mailrunner.mime.parse import Attachment
from mailrunner.tasks import cancel_and_wait

log = structlog.get_logger("mailrunner.attachments")

_UNSAFE = re.compile(r"[^\w.+@-]+")


class AttachmentStorage(Protocol):
    """Turns decoded attachments into what the event carries."""

    async def store(
        self, event_id: str, attachments: Sequence[Attachment]
    ) -> tuple[StoredAttachment, ...]: ...


class MemoryStorage:
    """Attachments travel inside the event as base64."""

    async def store(
        self, event_id: str, attachments: Sequence[Attachment]
    ) -> tuple[StoredAttachment, ...]:
        return tuple(
            StoredAttachment(
                filename=a.filename,
                content_type=a.content_type,
                size=a.size,
                content_id=a.content_id,
                inline=a.inline,
                content_base64=base64.b64encode(a.content).decode("ascii"),
            )
            for a in attachments
        )


def safe_filename(filename: str | None, index: int) -> str:
    """A filename is data, never a path: keep a readable name without separators."""
    stem = _UNSAFE.sub("_", os.path.basename((filename or "").replace("\\", "/")))
    stem = stem.strip("._")[:120]
    return f"{index:03d}-{stem or 'attachment'}"


PIPELINE_MARK = ".pipeline"
"""A file in each event folder written on the Jobs path, holding the name of the pipeline the
email's job went to: destroying that pipeline with purge finds its folders this way, since
not every driver can list the jobs it holds. `safe_filename` never yields this name."""


class TempfileStorage:
    """Attachments are written under `<directory>/<event id>/` and the event carries paths.

    `pipeline` is where this server pushes its emails' jobs (Jobs path only); each folder is
    marked with it.
    """

    def __init__(self, directory: Path, pipeline: str | None = None) -> None:
        self.directory = directory.resolve()
        self._pipeline = pipeline

    async def store(
        self, event_id: str, attachments: Sequence[Attachment]
    ) -> tuple[StoredAttachment, ...]:
        if not attachments:
            return ()
        return await asyncio.to_thread(self._write_all, event_id, attachments)

    def _write_all(
        self, event_id: str, attachments: Sequence[Attachment]
    ) -> tuple[StoredAttachment, ...]:
        folder = self.directory / event_id
        folder.mkdir(parents=True, exist_ok=True)
        if self._pipeline is not None:
            (folder / PIPELINE_MARK).write_text(self._pipeline, encoding="utf-8")
        stored = []
        for index, attachment in enumerate(attachments, start=1):
            path = folder / safe_filename(attachment.filename, index)
            with path.open("wb") as handle:
                handle.write(attachment.content)
                handle.flush()
                os.fsync(handle.fileno())
            stored.append(
                StoredAttachment(
                    filename=attachment.filename,
                    content_type=attachment.content_type,
                    size=attachment.size,
                    content_id=attachment.content_id,
                    inline=attachment.inline,
                    path=str(path),
                )
            )
        _fsync_directory(folder)
        return tuple(stored)

    def remove(self, event_id: str) -> None:
        """Delete one event's files (when its job is acked or purged)."""
        shutil.rmtree(self.directory / event_id, ignore_errors=True)

    def remove_pipeline(self, pipeline: str) -> int:
        """Delete the folders marked with `pipeline` (destroyed with purge); returns how many."""
        if not self.directory.is_dir():
            return 0
        removed = 0
        for folder in self.directory.iterdir():
            try:
                owner = (folder / PIPELINE_MARK).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue  # not an event folder of the Jobs path, or already gone
            if owner == pipeline:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed

    def remove_older_than(self, age: float) -> int:
        """Delete event folders not touched for `age` seconds; returns how many went."""
        if not self.directory.is_dir():
            return 0
        cutoff = time.time() - age
        removed = 0
        for folder in self.directory.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if folder.is_dir() and folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed += 1
        return removed


def _fsync_directory(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


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
