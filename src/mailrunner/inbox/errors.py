"""The inbox's failures, under mailrunner's one exception tree.

MailrunnerError
└── InboxError         the inbox database could not be opened, read or written
    ├── InboxLocked    another connection held the write lock past the busy timeout
    ├── FtsUnavailable this SQLite has no FTS5 with the trigram tokenizer
    └── QueryError     a search query is not valid syntax (the API answers 422)
"""

from __future__ import annotations

from mailrunner.errors import MailrunnerError


class InboxError(MailrunnerError):
    """The inbox database could not be opened, read or written (locked, full, corrupt)."""


class InboxLocked(InboxError):
    """Another connection held the database's write lock for longer than the busy timeout:
    the write did not happen and may be retried."""


class FtsUnavailable(InboxError):
    """SQLite lacks FTS5 or its trigram tokenizer (3.34+), which search depends on."""


class QueryError(InboxError):
    """A search query that cannot be parsed; `position` is the 0-based index into the query
    string of the character at fault, so a client can point at it."""

    def __init__(self, position: int, message: str) -> None:
        self.position = position
        self.message = message
        super().__init__(f"{message} (at position {position})")
