"""The one search language of the inbox, shared by the HTTP API, the CLI and the web UI.

    invoice                 bare word: subject, body (text and HTML as text), from or to
    "two words"             quotes group words into one phrase, matched as written;
                            inside quotes `""` stands for one `"`
    from:alice              the From header or the envelope sender
    to:bob                  To, Cc and the envelope recipients (so Bcc too)
    subject:"q3 report"     the subject
    has:attachment          at least one attachment (inline ones count)
    is:unread  is:read      the read flag
    after:2024-05-01        received at or after that instant (a date is its 00:00 UTC)
    before:2024-05-01T12:00 received before that instant (no offset means UTC)
    -term                   negation of any term above

Terms are separated by white space and must all hold. Matching is by substring and ignores
ASCII case. A word shaped like `key:` must be a known key, so a typo such as `subjet:x` is
reported instead of silently searching for the text; quote it (`"re:x"`) to search for text
with a colon. Parsing only builds a typed `Query`: how it becomes SQL is `inbox.sql`'s
concern, and user text never reaches SQL or FTS5 syntax except as a bound, quoted string.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from mailrunner.inbox.errors import QueryError

MAX_TERMS = 32
"""More terms than any person types: bounds the SQL a query can build."""

_KEY = re.compile(r"([A-Za-z]+):")


class Field(enum.Enum):
    """Where a text term looks."""

    ANY = "any"
    FROM = "from"
    TO = "to"
    SUBJECT = "subject"


@dataclass(frozen=True, slots=True)
class Text:
    """Messages whose `field` contains `value` (or, when `negated`, does not)."""

    field: Field
    value: str
    negated: bool = False


@dataclass(frozen=True, slots=True)
class HasAttachment:
    """Messages with at least one attachment, or, when not `present`, with none."""

    present: bool = True


@dataclass(frozen=True, slots=True)
class ReadState:
    """Messages whose read flag is `read`."""

    read: bool


@dataclass(frozen=True, slots=True)
class Received:
    """Messages received before `at` (exclusive) or, when not `before`, at or after it: the
    two are each other's negation, so `-before:X` is `after:X`."""

    at: datetime
    before: bool


@dataclass(frozen=True, slots=True)
class After:
    """Messages received after one message, in the inbox's one order: `received_at`, then
    the order they were stored in (two messages may share a millisecond). Not written in
    the search language: the API's `since=<message id>`, resolved by `InboxStore.position`,
    so that "after it" never depends on when the inbox happened to store each message."""

    received_at: datetime
    seq: int


Term = Text | HasAttachment | ReadState | Received | After


@dataclass(frozen=True, slots=True)
class Query:
    """Terms that must all hold; no terms selects every message."""

    terms: tuple[Term, ...] = ()


_TEXT_KEYS = {"from": Field.FROM, "to": Field.TO, "subject": Field.SUBJECT}
_KEYS = (*_TEXT_KEYS, "has", "is", "before", "after")


def parse(query: str) -> Query:
    """Parse a query string; raises QueryError with the position of the first fault."""
    nul = query.find("\x00")
    if nul >= 0:
        # FTS5 ends a string at NUL: refused here rather than cut short there.
        raise QueryError(nul, "a NUL character is not allowed")
    terms: list[Term] = []
    position = _skip_space(query, 0)
    while position < len(query):
        if len(terms) == MAX_TERMS:
            raise QueryError(position, f"at most {MAX_TERMS} terms are allowed")
        term, position = _term(query, position)
        terms.append(term)
        position = _skip_space(query, position)
    return Query(tuple(terms))


def _skip_space(query: str, position: int) -> int:
    while position < len(query) and query[position].isspace():
        position += 1
    return position


def _term(query: str, start: int) -> tuple[Term, int]:
    """One term beginning at `start`, and the position just after it."""
    negated = query[start] == "-"
    position = start + 1 if negated else start
    if position == len(query) or query[position].isspace():
        raise QueryError(start, "'-' must be followed by a term")
    key_match = _KEY.match(query, position)
    key = None
    if key_match is not None:
        key = key_match.group(1).lower()
        if key not in _KEYS:
            raise QueryError(position, f"unknown key '{key_match.group(1)}:'")
        position = key_match.end()
    value_at = position
    value, position = _value(query, position, key)
    return _make_term(key, value, value_at, negated), position


def _value(query: str, position: int, key: str | None) -> tuple[str, int]:
    """A bare word or a quoted phrase at `position`, and the position after it."""
    if position == len(query) or query[position].isspace():
        raise QueryError(position, f"'{key}:' needs a value")
    if query[position] == '"':
        return _quoted(query, position)
    end = position
    while end < len(query) and not query[end].isspace():
        if query[end] == '"':
            raise QueryError(end, "a quote may only open a value")
        end += 1
    return query[position:end], end


def _quoted(query: str, opening: int) -> tuple[str, int]:
    """The phrase quoted at `opening` (`""` inside stands for one `"`), and the position
    after its closing quote."""
    parts: list[str] = []
    start = opening + 1
    while True:
        closing = query.find('"', start)
        if closing < 0:
            raise QueryError(opening, "unclosed quote")
        parts.append(query[start:closing])
        if query.startswith('""', closing):
            parts.append('"')
            start = closing + 2
            continue
        after = closing + 1
        if after < len(query) and not query[after].isspace():
            raise QueryError(after, "a closing quote must be followed by a space")
        value = "".join(parts)
        if not value:
            raise QueryError(opening, "empty value")
        return value, after


def _make_term(key: str | None, value: str, value_at: int, negated: bool) -> Term:
    if key is None:
        return Text(Field.ANY, value, negated)
    if key in _TEXT_KEYS:
        return Text(_TEXT_KEYS[key], value, negated)
    word = value.lower()
    if key == "has":
        if word not in {"attachment", "attachments"}:
            raise QueryError(value_at, "'has:' takes 'attachment'")
        return HasAttachment(present=not negated)
    if key == "is":
        if word not in {"read", "unread"}:
            raise QueryError(value_at, "'is:' takes 'read' or 'unread'")
        return ReadState(read=(word == "read") != negated)
    return Received(_instant(value, value_at), before=(key == "before") != negated)


def _instant(value: str, value_at: int) -> datetime:
    """An ISO date (its 00:00 UTC) or datetime (UTC unless it carries an offset)."""
    try:
        instant = datetime.fromisoformat(value)  # a date alone is its 00:00
    except ValueError:
        raise QueryError(
            value_at, f"'{value}' is not an ISO date (YYYY-MM-DD) or datetime"
        ) from None
    if instant.tzinfo is None:
        return instant.replace(tzinfo=UTC)
    try:
        return instant.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+14:00 is before the first representable instant
        raise QueryError(value_at, f"'{value}' is out of the range of dates") from None
