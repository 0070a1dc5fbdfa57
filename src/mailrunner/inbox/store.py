"""The inbox's storage: one SQLite file (WAL) of messages, attachments and a search index.

Every method blocks; the server calls them through `asyncio.to_thread`. One store is shared
by every thread: it holds one connection for writes and one for reads, each used under its
own lock, so a listing never queues behind an insert that is waiting for another process's
write lock, and WAL lets the reader see the last commit meanwhile. A write that cannot get
the lock within `busy_timeout` raises `InboxLocked` and changes nothing, so the inbox's job
fails and is retried like any other; every other SQLite failure is an `InboxError` naming
the file.

Files: the database is created 0600 (SQLite gives its -wal and -shm files the same mode) in
a folder created 0700, as for the jobs database: it holds mail and captured credentials.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from mailrunner.config import DEFAULT_INBOX_MAX_MESSAGES
from mailrunner.files import create_directories, write_new_file
from mailrunner.inbox.errors import FtsUnavailable, InboxError, InboxLocked
from mailrunner.inbox.message import StoredMessage
from mailrunner.inbox.query import After, Query
from mailrunner.inbox.sql import SCHEMA, sql_time, where

BUSY_TIMEOUT = 5.0
"""Seconds a statement waits for another connection's lock before `InboxLocked`."""

READ_CACHE_KIB = 64 * 1024
"""Page cache of the reading connection, up to 64 MiB, filled only as pages are read: a
search for a 1- or 2-character word scans every body, which at 10,000 messages is some
15 MB that SQLite's default 2 MiB cache would read from the file again each time."""

_LOCK_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_NEWEST_FIRST = "received_at DESC, seq DESC"
_OLDEST_FIRST = "received_at, seq"
_SUMMARY_COLUMNS = (
    "id, received_at, sender, recipients, subject, size, attachment_count, is_read, snippet"
)


@dataclass(frozen=True, slots=True)
class Summary:
    """One line of the inbox list."""

    id: str
    received_at: datetime
    from_: str
    to: str
    subject: str
    size: int
    attachments: int
    read: bool
    snippet: str


class Page(NamedTuple):
    """A page of the list: how many messages match in all, and this page of them."""

    total: int
    messages: list[Summary]


class Attachment(NamedTuple):
    """An attachment's bytes and what to serve them as."""

    filename: str | None
    content_type: str
    content: bytes


@dataclass(frozen=True, slots=True)
class Stats:
    """Messages kept, and how many of them are unread."""

    count: int
    unread: int


def check_fts5(connection: sqlite3.Connection) -> None:
    """Raise FtsUnavailable unless this SQLite has FTS5 and its trigram tokenizer."""
    try:
        connection.execute("CREATE VIRTUAL TABLE temp.fts5_probe USING fts5(x, tokenize=trigram)")
        connection.execute("DROP TABLE temp.fts5_probe")
    except sqlite3.OperationalError as error:
        raise FtsUnavailable(
            f"SQLite {sqlite3.sqlite_version} has no FTS5 full-text search with the trigram"
            f" tokenizer, which the inbox needs (SQLite 3.34 or later, built with FTS5):"
            f" {error}"
        ) from error


class InboxStore:
    """The messages of the inbox; see the module docstring for threads, locks and files.

    Retention is `enforce_retention`'s: call it after each insert and periodically (for
    `max_age`), and announce the ids it returns as deleted.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_messages: int | None = DEFAULT_INBOX_MAX_MESSAGES,
        max_age: float | None = None,
        busy_timeout: float = BUSY_TIMEOUT,
    ) -> None:
        self.path = path
        self.max_messages = max_messages
        self.max_age = max_age
        self._busy_timeout = busy_timeout
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        try:
            create_directories(path.parent)
            with contextlib.suppress(FileExistsError):
                # SQLite would create it 0644 less the umask.
                write_new_file(path, b"")
        except OSError as error:
            raise InboxError(f"inbox {path}: cannot create it: {error}") from error
        self._writer = self._connect(setup=True)
        try:
            self._reader = self._connect(setup=False)
        except InboxError:
            self._writer.close()
            raise

    def _connect(self, *, setup: bool) -> sqlite3.Connection:
        try:
            connection = sqlite3.connect(
                self.path,
                isolation_level=None,
                timeout=self._busy_timeout,
                check_same_thread=False,
            )
        except sqlite3.Error as error:
            raise self._error(error) from error
        try:
            if setup:
                check_fts5(connection)
                connection.execute("PRAGMA journal_mode = WAL")
                connection.executescript(SCHEMA)
            else:
                connection.execute(f"PRAGMA cache_size = -{READ_CACHE_KIB}")
            connection.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as error:
            connection.close()
            raise self._error(error) from error
        except FtsUnavailable:
            connection.close()
            raise
        return connection

    def _error(self, error: sqlite3.Error) -> InboxError:
        # Errors of the sqlite3 module itself (a closed connection) carry no SQLite code.
        if getattr(error, "sqlite_errorcode", 0) & 0xFF in _LOCK_CODES:
            return InboxLocked(
                f"inbox {self.path}: locked by another connection for more than"
                f" {self._busy_timeout:g} s: {error}"
            )
        return InboxError(f"inbox {self.path}: {error}")

    def close(self) -> None:
        """Close both connections; the store cannot be used afterwards."""
        with self._write_lock:
            self._writer.close()
        with self._read_lock:
            self._reader.close()

    def __enter__(self) -> InboxStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed if the block returns, rolled back if it raises.

        BEGIN IMMEDIATE takes the write lock first, so the busy timeout applies to it alone
        (a read transaction upgraded later would fail at once instead of waiting)."""
        with self._write_lock:
            db = self._writer
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                    db.execute("COMMIT")
                finally:
                    if db.in_transaction:
                        db.rollback()
            except sqlite3.Error as error:
                raise self._error(error) from error

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every query in the block sees the same commit."""
        with self._read_lock:
            db = self._reader
            try:
                db.execute("BEGIN")
                try:
                    yield db
                finally:
                    db.rollback()
            except sqlite3.Error as error:
                raise self._error(error) from error

    # --- writes ---------------------------------------------------------------------------

    def insert(self, message: StoredMessage) -> bool:
        """Keep `message` durably; False (and no change) if its id is already kept."""
        (inserted,) = self.insert_many([message])
        return inserted

    def insert_many(self, messages: Sequence[StoredMessage]) -> list[bool]:
        """Keep `messages` durably in one transaction, so with one sync to disk for all: how a
        consumer that takes several jobs at once keeps up. For each message, False if its id
        was already kept (by then, also earlier in `messages`)."""
        texts = [message.search_body for message in messages]  # parsed before the lock
        with self._writing() as db:
            return [
                _insert(db, message, text) for message, text in zip(messages, texts, strict=True)
            ]

    def set_read(self, message_id: str, read: bool) -> bool:
        """Mark a message read or unread; False if there is no such message."""
        with self._writing() as db:
            cursor = db.execute(
                "UPDATE messages SET is_read = ? WHERE id = ?", (int(read), message_id)
            )
            return cursor.rowcount > 0

    def delete(self, message_id: str) -> bool:
        """Delete a message and its attachments; False if there is no such message."""
        with self._writing() as db:
            return db.execute("DELETE FROM messages WHERE id = ?", (message_id,)).rowcount > 0

    def delete_matching(self, query: Query | None) -> list[str]:
        """Delete every message `query` selects (all of them for None); their ids."""
        clause, parameters = where(query or Query())
        with self._writing() as db:
            rows = db.execute(f"SELECT seq, id FROM messages WHERE {clause}", parameters)
            doomed = rows.fetchall()
            db.executemany("DELETE FROM messages WHERE seq = ?", [(seq,) for seq, _ in doomed])
        return [message_id for _, message_id in doomed]

    def enforce_retention(self, now: float | None = None) -> list[str]:
        """Delete messages older than `max_age` seconds, then the oldest beyond
        `max_messages`; the ids deleted."""
        removed: list[str] = []
        with self._writing() as db:
            if self.max_age is not None:
                moment = time.time() if now is None else now
                cutoff = datetime.fromtimestamp(moment - self.max_age, UTC)
                rows = db.execute(
                    "DELETE FROM messages WHERE received_at < ? RETURNING id",
                    (sql_time(cutoff),),
                )
                removed += [message_id for (message_id,) in rows.fetchall()]
            if self.max_messages is not None:
                rows = db.execute(
                    "DELETE FROM messages WHERE seq IN (SELECT seq FROM messages"
                    f" ORDER BY {_NEWEST_FIRST} LIMIT -1 OFFSET ?) RETURNING id",
                    (self.max_messages,),
                )
                removed += [message_id for (message_id,) in rows.fetchall()]
        return removed

    # --- reads ----------------------------------------------------------------------------

    def oldest(self, query: Query, limit: int) -> list[Summary]:
        """The first `limit` messages `query` selects, oldest first (`received_at`, then the
        order they were stored in): what a wait for a message looks for."""
        clause, parameters = where(query)
        with self._reading() as db:
            rows = db.execute(
                f"SELECT {_SUMMARY_COLUMNS} FROM messages WHERE {clause}"
                f" ORDER BY {_OLDEST_FIRST} LIMIT ?",
                [*parameters, limit],
            ).fetchall()
        return [_summary(row) for row in rows]

    def position(self, message_id: str) -> After | None:
        """The term selecting the messages received after this one; None if it is not kept."""
        with self._reading() as db:
            row = db.execute(
                "SELECT received_at, seq FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
        return None if row is None else After(datetime.fromisoformat(row[0]), row[1])

    def list(self, query: Query, limit: int, offset: int = 0) -> Page:
        """The messages `query` selects, newest first: their number and one page of them.

        A search reads the ids of every hit first, in order, then the page's rows: one pass
        of the search where a count and a page would need two, which matters when a short
        word scans every body (see `inbox.sql`). Without terms, the count and the page are
        read from the `received_at` index instead, the inbox's first page in well under a
        millisecond."""
        if limit < 0 or offset < 0:
            raise ValueError(f"limit ({limit}) and offset ({offset}) must not be negative")
        with self._reading() as db:
            if not query.terms:
                (total,) = db.execute("SELECT count(*) FROM messages").fetchone()
                rows = db.execute(
                    f"SELECT {_SUMMARY_COLUMNS} FROM messages"
                    f" ORDER BY {_NEWEST_FIRST} LIMIT ? OFFSET ?",
                    (limit, offset),
                ).fetchall()
                return Page(total, [_summary(row) for row in rows])
            clause, parameters = where(query)
            hits = db.execute(
                f"SELECT seq FROM messages WHERE {clause} ORDER BY {_NEWEST_FIRST}", parameters
            ).fetchall()
            page = [seq for (seq,) in hits[offset : offset + limit]]
            rows = db.execute(
                f"SELECT {_SUMMARY_COLUMNS} FROM messages"
                f" WHERE seq IN (SELECT value FROM json_each(?)) ORDER BY {_NEWEST_FIRST}",
                (orjson.dumps(page),),
            ).fetchall()
        return Page(len(hits), [_summary(row) for row in rows])

    def get(self, message_id: str) -> tuple[bytes, bool] | None:
        """The stored event JSON of a message and its read flag."""
        with self._reading() as db:
            row = db.execute(
                "SELECT event_json, is_read FROM messages JOIN contents USING (seq) WHERE id = ?",
                (message_id,),
            ).fetchone()
        return None if row is None else (bytes(row[0]), bool(row[1]))

    def raw(self, message_id: str) -> bytes | None:
        """The exact bytes received for a message."""
        with self._reading() as db:
            row = db.execute(
                "SELECT raw FROM messages JOIN contents USING (seq) WHERE id = ?", (message_id,)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def attachment(self, message_id: str, index: int) -> Attachment | None:
        """A message's attachment number `index` (0-based, in the event's order)."""
        with self._reading() as db:
            row = db.execute(
                "SELECT filename, content_type, content FROM messages JOIN attachments"
                " USING (seq) WHERE id = ? AND position = ?",
                (message_id, index),
            ).fetchone()
        return None if row is None else Attachment(row[0], row[1], bytes(row[2]))

    def stats(self) -> Stats:
        """How many messages are kept and how many of them are unread."""
        with self._reading() as db:
            count, unread = db.execute(
                "SELECT count(*), count(*) - coalesce(sum(is_read), 0) FROM messages"
            ).fetchone()
        return Stats(count, unread)


def _insert(db: sqlite3.Connection, message: StoredMessage, search_text: str) -> bool:
    row = db.execute(
        "INSERT INTO messages (id, received_at, sender, recipients, subject, size,"
        " attachment_count, snippet) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (id) DO NOTHING RETURNING seq",
        (
            message.id,
            sql_time(message.received_at),
            message.from_,
            message.to,
            message.subject,
            message.size,
            len(message.attachments),
            message.snippet,
        ),
    ).fetchone()
    if row is None:
        return False
    (seq,) = row
    db.execute(
        "INSERT INTO contents (seq, event_json, raw) VALUES (?, ?, ?)",
        (seq, message.event_json, message.raw),
    )
    db.execute(
        "INSERT INTO texts (seq, subject, body, sender, recipients) VALUES (?, ?, ?, ?, ?)",
        (seq, message.subject, search_text, message.from_, message.to),
    )
    db.executemany(
        "INSERT INTO attachments (seq, position, filename, content_type, content_id, inline,"
        " content) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(seq, position, *attachment) for position, attachment in enumerate(message.attachments)],
    )
    return True


def _summary(row: tuple[Any, ...]) -> Summary:
    message_id, received, sender, recipients, subject, size, attachments, read, snippet = row
    return Summary(
        message_id,
        datetime.fromisoformat(received),
        sender,
        recipients,
        subject,
        size,
        attachments,
        bool(read),
        snippet,
    )
