"""The inbox as the server runs it: the blocking store on threads, retention, and the live
feed that `GET /events` streams.

The store's calls run through `asyncio.to_thread`, so a slow disk or another process's
write lock never stalls the event loop. Every change that removes messages (a delete, a
clear, retention) is published as a `deleted` event, and every new message as a `message`
event with its summary, built only while someone listens.

`wait` (`GET /messages/wait`) is woken by `add_many` itself, not through the feed: a waiter
costs nothing while no mail comes (the feed's listeners start the periodic stats), and it
is armed before its first look, so a message stored in between wakes it again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import structlog

from mailrunner.config import InboxConfig
from mailrunner.inbox.errors import InboxError
from mailrunner.inbox.feed import Feed
from mailrunner.inbox.message import StoredMessage
from mailrunner.inbox.preview import content_id_key, embed_images, referenced_ids
from mailrunner.inbox.query import After, Query
from mailrunner.inbox.sql import sql_time
from mailrunner.inbox.store import Attachment, InboxStore, Page, Summary

log = structlog.get_logger("mailrunner.inbox")

RETENTION_INTERVAL = 60.0
"""Seconds between two `max_age` sweeps at most (sooner for a shorter `max_age`)."""


def summary_json(summary: Summary) -> dict[str, Any]:
    """A summary as the API, the CLI and the `message` event send it: `received_at` like
    the event's (UTC, milliseconds, `Z`)."""
    return {
        "id": summary.id,
        "received_at": sql_time(summary.received_at),
        "from": summary.from_,
        "to": summary.to,
        "subject": summary.subject,
        "size": summary.size,
        "attachments": summary.attachments,
        "read": summary.read,
        "snippet": summary.snippet,
    }


def _summary_of(message: StoredMessage) -> Summary:
    return Summary(
        message.id,
        message.received_at,
        message.from_,
        message.to,
        message.subject,
        message.size,
        len(message.attachments),
        False,
        message.snippet,
    )


class Inbox:
    """The caught mail: the store on its own thread, and the live feed for /events."""

    def __init__(self, settings: InboxConfig, path: Path) -> None:
        self.settings = settings
        self.path = path
        self.feed = Feed()
        self._store: InboxStore | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._waiters: set[asyncio.Event] = set()
        self._looking = asyncio.Lock()
        self._closed = False

    @property
    def store(self) -> InboxStore:
        if self._store is None:
            raise InboxError(f"inbox {self.path} is not open")
        return self._store

    async def open(self) -> None:
        """Open (or create) the store; raises FtsUnavailable when SQLite cannot search."""
        self._store = await asyncio.to_thread(
            InboxStore,
            self.path,
            max_messages=self.settings.max_messages,
            max_age=self.settings.max_age,
        )
        if self.settings.max_age is not None:
            self._sweeper = asyncio.create_task(self._sweep(self.settings.max_age))

    async def close(self) -> None:
        """End every /events stream and every wait at once, then close the store."""
        self._closed = True
        self._wake()
        await self.feed.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        store, self._store = self._store, None
        if store is not None:
            await asyncio.to_thread(store.close)

    async def _sweep(self, max_age: float) -> None:
        """Delete messages past `max_age` even when no new mail comes to trigger it."""
        while True:
            await asyncio.sleep(min(RETENTION_INTERVAL, max_age))
            try:
                self._deleted(await asyncio.to_thread(self.store.enforce_retention))
            except InboxError as error:
                log.warning("inbox retention failed", error=str(error))

    def _deleted(self, ids: list[str]) -> None:
        if ids:
            self.feed.publish("deleted", {"ids": ids})

    # --- writes ---------------------------------------------------------------------------

    async def add(self, message: StoredMessage) -> bool:
        """Keep one message: `add_many` of one."""
        (inserted,) = await self.add_many([message])
        return inserted

    async def add_many(self, messages: Sequence[StoredMessage]) -> list[bool]:
        """Keep `messages` in one transaction (one sync to disk for all), apply retention
        once, and publish each new message and any they pushed out; for each message, False
        if its id was already kept. InboxLocked when the write lock stayed taken: nothing
        was stored, the caller retries them all."""
        store = self.store

        def insert() -> tuple[list[bool], list[str]]:
            inserted = store.insert_many(messages)
            return inserted, store.enforce_retention() if any(inserted) else []

        inserted, removed = await asyncio.to_thread(insert)
        if any(inserted):
            self._wake()
        if self.feed.listening:
            for message, new in zip(messages, inserted, strict=True):
                if new:
                    self.feed.publish("message", summary_json(_summary_of(message)))
        self._deleted(removed)
        return inserted

    async def set_read(self, message_id: str, read: bool) -> bool:
        """Mark a message read or unread; False if there is no such message."""
        return await asyncio.to_thread(self.store.set_read, message_id, read)

    async def delete(self, message_id: str) -> bool:
        """Delete one message; False if there is no such message."""
        deleted = await asyncio.to_thread(self.store.delete, message_id)
        if deleted:
            self._deleted([message_id])
        return deleted

    async def delete_matching(self, query: Query | None) -> list[str]:
        """Delete every message `query` selects (all for None); their ids."""
        ids = await asyncio.to_thread(self.store.delete_matching, query)
        self._deleted(ids)
        return ids

    # --- waiting for mail -----------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """How many waits are armed: a caller (a test) that must not send before a wait is
        listening can tell when one is."""
        return len(self._waiters)

    def _wake(self) -> None:
        for waiter in self._waiters:
            waiter.set()

    @contextlib.contextmanager
    def _armed(self) -> Iterator[asyncio.Event]:
        """An event set by every store from now on (and by `close`), while the block runs."""
        arrived = asyncio.Event()
        self._waiters.add(arrived)
        try:
            yield arrived
        finally:
            self._waiters.discard(arrived)

    async def wait(self, query: Query) -> Summary:
        """The oldest message `query` selects, as soon as it is stored (bound the wait with
        `asyncio.timeout`); InboxError if the inbox closes meanwhile: the server is stopping,
        which is no answer to what arrived. Looks again each time messages are stored, never
        on a clock."""
        with self._armed() as arrived:
            while not self._closed:
                arrived.clear()  # before the look: a store during it wakes the next wait
                # one look at a time: a store wakes every wait, and a thousand of them each
                # taking a thread would hold the inbox's own writes (and SMTP's 250s) behind
                async with self._looking:
                    found = await asyncio.to_thread(self.store.oldest, query, 1)
                if found:
                    return found[0]
                await arrived.wait()
        raise InboxError(f"inbox {self.path} closed while waiting: the server is stopping")

    # --- reads ----------------------------------------------------------------------------

    async def oldest(self, query: Query, limit: int) -> list[Summary]:
        """The first `limit` messages `query` selects, oldest first."""
        return await asyncio.to_thread(self.store.oldest, query, limit)

    async def position(self, message_id: str) -> After | None:
        """The term selecting the messages received after this one; None if it is not kept."""
        return await asyncio.to_thread(self.store.position, message_id)

    async def list(self, query: Query, limit: int, offset: int = 0) -> Page:
        """The messages `query` selects, newest first: how many in all, and one page."""
        return await asyncio.to_thread(self.store.list, query, limit, offset)

    async def get(self, message_id: str) -> tuple[bytes, bool] | None:
        """The stored event JSON of a message and its read flag."""
        return await asyncio.to_thread(self.store.get, message_id)

    async def raw(self, message_id: str) -> bytes | None:
        """The exact bytes received."""
        return await asyncio.to_thread(self.store.raw, message_id)

    async def attachment(self, message_id: str, index: int) -> Attachment | None:
        """Attachment number `index` (0-based) of a message."""
        return await asyncio.to_thread(self.store.attachment, message_id, index)

    async def html(self, message_id: str) -> str | None:
        """The HTML body for the preview, its `cid:` images as `data:` URIs ("" when the
        message has no HTML part); None if there is no such message."""
        return await asyncio.to_thread(_preview, self.store, message_id)


def _preview(store: InboxStore, message_id: str) -> str | None:
    found = store.get(message_id)
    if found is None:
        return None
    event = orjson.loads(found[0])
    html: str = event["message"]["html_body"]
    wanted = referenced_ids(html)
    images: dict[str, tuple[str, bytes]] = {}
    for index, entry in enumerate(event["attachments"]):
        key = entry["content_id"] and content_id_key(entry["content_id"])
        if key in wanted and key not in images:
            attachment = store.attachment(message_id, index)
            if attachment is not None:
                images[key] = (attachment.content_type, attachment.content)
    return embed_images(html, images)
