"""The inbox's consumer: leases the inbox pipeline's jobs and stores each email in the inbox,
in this process (no worker pool).

A job is acked only once its message is stored, so a locked or full `inbox.db` fails the
job, which is retried like any other after `retries` attempts lands in the failed list:
never lost. Inserts are idempotent by event id, so a job delivered twice stores one message.

Attachments in tempfile mode: the event points at files that belong to the other
pipelines' jobs and go when the last of those is acked, possibly before this consumer gets
to the email. They are read while they exist, and otherwise taken from the raw message (the
inbox job always carries it), parsed again as the ingress parsed it.

A claim-checked message (`auto`, over `claim_check_bytes`) has its raw bytes in a file,
`message.raw_path`, in the same folder as its attachments; the folder waits for the inbox's
job too, and is released once the message is stored. The file is found by the event id in
this server's own attachment folders (`TempfileStorage.raw_file`), never at the path the job
names: anyone who may push a job could name any file.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
import structlog

from mailrunner.errors import DriverError
from mailrunner.inbox.message import StoredMessage, attachment_content
from mailrunner.inbox.service import Inbox
from mailrunner.jobs.driver import Lease, ack_all
from mailrunner.jobs.service import Pipeline
from mailrunner.mime.attachments import TempfileStorage
from mailrunner.mime.parse import ParseOptions, parse
from mailrunner.tasks import cancel_and_wait

log = structlog.get_logger("mailrunner.inbox")

RESERVE_WAIT = 1.0
DRIVER_RETRY_DELAY = 1.0
RETRY_DELAY = 1.0
"""Seconds before a job whose message could not be stored is due again."""


class BadInboxJob(ValueError):
    """A job in the inbox pipeline that is not an email event with its raw bytes."""


def stored_message(
    payload: bytes,
    max_preview_bytes: int,
    options: ParseOptions,
    raw_files: TempfileStorage | None = None,
) -> StoredMessage:
    """The message an inbox job carries; attachments the event holds as files (tempfile
    mode) are taken from the raw message, never read from the path a job names (see
    `attachment_content`), and so is a claim-checked raw message (`raw_files`). Blocks
    (files, parsing): run it on a thread."""
    try:
        event = orjson.loads(payload)
        raw = _raw_bytes(event, raw_files)
    except (ValueError, KeyError, TypeError, OSError) as error:
        raise BadInboxJob(f"not an email event with message.raw: {error!r}") from None
    entries = event.get("attachments") or []
    position = {id(entry): index for index, entry in enumerate(entries)}
    parsed: list[bytes] = []

    def content(entry: Mapping[str, Any]) -> bytes:
        if "content" in entry:
            return attachment_content(entry)
        if not parsed:
            parsed.extend(part.content for part in parse(raw, options).attachments)
        return parsed[position[id(entry)]]

    try:
        return StoredMessage.from_event(event, raw, content, max_preview_bytes)
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise BadInboxJob(f"the event cannot be kept: {error!r}") from None


def _raw_bytes(event: Mapping[str, Any], raw_files: TempfileStorage | None) -> bytes:
    """`message.raw`, or the claim-checked file of the event's id when the event names one."""
    message = event["message"]
    if "raw" in message or "raw_path" not in message or raw_files is None:
        return base64.b64decode(message["raw"], validate=True)
    path: Path | None = raw_files.raw_file(str(event["id"]))
    if path is None:
        raise FileNotFoundError(f"no raw message of event {event['id']!r} in {raw_files.directory}")
    return path.read_bytes()


class InboxConsumer:
    """Stores the inbox pipeline's jobs, a reserved batch at a time in one transaction.

    `files_read` is told each event id (and the pipeline) once its message is stored (the
    app frees the files no other pipeline holds: a retry takes attachments from the raw
    message); `raw_files` is where claim-checked messages keep their raw bytes (mode `auto`).
    """

    def __init__(
        self,
        pipeline: Pipeline,
        inbox: Inbox,
        options: ParseOptions,
        files_read: Callable[[str, str], Awaitable[None]] | None = None,
        *,
        raw_files: TempfileStorage | None = None,
    ) -> None:
        self.pipeline = pipeline
        self._inbox = inbox
        self._options = options
        self._files_read = files_read
        self._raw_files = raw_files
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.pipeline.consuming = True
        self._task = asyncio.create_task(self._loop(), name=f"inbox-{self.pipeline.name}")
        log.info("inbox consuming", pipeline=self.pipeline.name, path=str(self._inbox.path))

    async def stop(self) -> None:
        self.pipeline.consuming = False
        if self._task is not None:
            await cancel_and_wait(self._task, f"inbox consumer of {self.pipeline.name}")

    async def _loop(self) -> None:
        settings = self.pipeline.settings
        while True:
            await self.pipeline.resumed.wait()
            try:
                leases = await self.pipeline.driver.reserve(settings.prefetch, RESERVE_WAIT)
            except DriverError as error:
                log.error("cannot reserve jobs", pipeline=self.pipeline.name, error=str(error))
                await asyncio.sleep(DRIVER_RETRY_DELAY)
                continue
            await self._settle_all(leases)

    async def _settle_all(self, leases: list[Lease]) -> None:
        """Store the batch's messages in one transaction (one sync to disk), then ack them;
        when the inbox cannot store them (locked, full), every job of the batch is retried,
        or failed after `retries`: never lost."""
        pending = list(leases)
        try:
            if self.pipeline.paused:
                return
            try:
                stored = await self._store(pending)
            except DriverError:
                raise
            except Exception as error:  # InboxLocked, a full disk: retried like any failed job
                for lease in list(pending):
                    await self._nack(lease, str(error), retry=True)
                    pending.remove(lease)
                return
            await ack_all(stored)
            for lease in stored:
                pending.remove(lease)
        except DriverError as error:
            log.error("cannot settle inbox job", pipeline=self.pipeline.name, error=str(error))
        finally:
            # a cancel (stop) lands here too: nothing leased stays held until its timeout
            await asyncio.shield(self._give_back(pending))

    async def _store(self, pending: list[Lease]) -> list[Lease]:
        """Keep the messages of `pending`'s jobs, all in one transaction; the leases whose
        message is now kept. A job that is no email event fails at once and leaves
        `pending`."""
        messages = await asyncio.to_thread(self._read_all, pending)
        readable: list[tuple[Lease, StoredMessage]] = []
        for lease, message in zip(list(pending), messages, strict=True):
            if isinstance(message, BadInboxJob):
                await self._nack(lease, str(message), retry=False)
                pending.remove(lease)
                continue
            readable.append((lease, message))
        await self._inbox.add_many([message for _, message in readable])
        if self._files_read is not None:
            # once stored: a claim-checked message's raw file is all a retry could read
            for lease, _ in readable:
                await self._files_read(lease.job.id, self.pipeline.name)
        return [lease for lease, _ in readable]

    def _read_all(self, leases: list[Lease]) -> list[StoredMessage | BadInboxJob]:
        """Each job's message, or why it is none. Blocks (files, parsing): run on a thread."""
        found: list[StoredMessage | BadInboxJob] = []
        for lease in leases:
            try:
                found.append(
                    stored_message(
                        lease.job.payload,
                        self._inbox.settings.max_preview_bytes,
                        self._options,
                        self._raw_files,
                    )
                )
            except BadInboxJob as error:
                found.append(error)
        return found

    async def _give_back(self, leases: list[Lease]) -> None:
        for lease in leases:
            try:
                await lease.release()
            except DriverError as error:
                log.warning("inbox job not given back", id=lease.job.id, error=str(error))

    async def _nack(self, lease: Lease, error: str, *, retry: bool) -> None:
        """Retry the job after RETRY_DELAY while attempts remain, else move it to the failed
        list, where `jobs failed retry` brings it back."""
        requeue = retry and lease.attempt < self.pipeline.settings.retries
        await lease.nack(requeue=requeue, delay=RETRY_DELAY if requeue else 0.0, error=error)
        log.warning(
            "inbox could not store a message: job retried" if requeue else "inbox job failed",
            pipeline=self.pipeline.name,
            id=lease.job.id,
            attempt=lease.attempt,
            error=error,
        )
