"""The inbox's SQLite schema, and a parsed search query turned into a WHERE clause.

Schema:

    messages       one small row per message, what a listing shows and filters on; `seq` (an
                   INTEGER PRIMARY KEY, so VACUUM cannot renumber it) is the key the other
                   tables use, `id` the event UUID. `received_at` is ISO 8601 UTC with
                   milliseconds and a `Z`, so text order is time order.
    contents       the stored event JSON and the raw bytes, kept apart so that a filter or a
                   count that scans `messages` reads a few hundred pages, not whole messages
    attachments    one row per attachment: (seq, position 0-based) and its bytes
    texts          what search reads: subject, body (the text part, then the HTML part's
                   text), sender and recipients
    messages_fts   FTS5 index over `texts` (its external content, so the text is kept once),
                   kept in step by triggers on `texts`

A message is inserted into every table in one transaction; triggers delete its other rows
with its `messages` row, so retention and deletes touch one table. Indexed text is never
updated (only `is_read` is).

Search: user text reaches FTS5 only as one double-quoted string (any `"` doubled) bound as a
parameter, so NEAR, OR, `*`, `^` or a `column:` filter inside it are characters to find, not
syntax. The trigram tokenizer indexes every 3-character substring, which finds words in text
without spaces (Chinese, Japanese) and parts of words; but a string shorter than 3 characters
has no trigram and matches nothing in FTS5, so a 1- or 2-character term is looked for with
LIKE over the columns instead (with `%`, `_` and the escape character escaped): a scan of
every body, some 35 ms at 10,000 messages of 1.5 KB (`bench/inbox_store.py`), which is why
`InboxStore.list` runs a search once per page. LIKE ignores ASCII case only; trigram folds
case for all of Unicode.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import assert_never

from mailrunner.inbox.query import (
    After,
    Field,
    HasAttachment,
    Query,
    ReadState,
    Received,
    Term,
    Text,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq              INTEGER PRIMARY KEY,
    id               TEXT    NOT NULL UNIQUE,
    received_at      TEXT    NOT NULL,
    sender           TEXT    NOT NULL,
    recipients       TEXT    NOT NULL,
    subject          TEXT    NOT NULL,
    size             INTEGER NOT NULL,
    attachment_count INTEGER NOT NULL,
    is_read          INTEGER NOT NULL DEFAULT 0,
    snippet          TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_received ON messages (received_at);
CREATE TABLE IF NOT EXISTS contents (
    seq        INTEGER PRIMARY KEY,
    event_json BLOB NOT NULL,
    raw        BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS attachments (
    seq          INTEGER NOT NULL,
    position     INTEGER NOT NULL,
    filename     TEXT,
    content_type TEXT    NOT NULL,
    content_id   TEXT,
    inline       INTEGER NOT NULL,
    content      BLOB    NOT NULL,
    PRIMARY KEY (seq, position)
);
CREATE TABLE IF NOT EXISTS texts (
    seq        INTEGER PRIMARY KEY,
    subject    TEXT NOT NULL,
    body       TEXT NOT NULL,
    sender     TEXT NOT NULL,
    recipients TEXT NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5(
    subject, body, sender, recipients,
    content = 'texts', content_rowid = 'seq', tokenize = 'trigram'
);
CREATE TRIGGER IF NOT EXISTS texts_indexed AFTER INSERT ON texts BEGIN
    INSERT INTO messages_fts (rowid, subject, body, sender, recipients)
    VALUES (new.seq, new.subject, new.body, new.sender, new.recipients);
END;
CREATE TRIGGER IF NOT EXISTS texts_removed AFTER DELETE ON texts BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, subject, body, sender, recipients)
    VALUES ('delete', old.seq, old.subject, old.body, old.sender, old.recipients);
END;
CREATE TRIGGER IF NOT EXISTS messages_removed AFTER DELETE ON messages BEGIN
    DELETE FROM texts WHERE seq = old.seq;
    DELETE FROM contents WHERE seq = old.seq;
    DELETE FROM attachments WHERE seq = old.seq;
END;
"""

TRIGRAM = 3
"""The shortest string the trigram index can find."""

_COLUMNS = {
    Field.ANY: ("subject", "body", "sender", "recipients"),
    Field.FROM: ("sender",),
    Field.TO: ("recipients",),
    Field.SUBJECT: ("subject",),
}
_IN_INDEX = "+seq IN (SELECT rowid FROM messages_fts WHERE messages_fts MATCH ?)"
"""The `+` keeps SQLite from turning the hits into rowid lookups to be sorted: they are read
newest first along the `received_at` index instead, each checked against the list."""
_LIKE = "{} LIKE ? ESCAPE '\\'"


def sql_time(instant: datetime) -> str:
    """`instant` as stored in `received_at`: UTC, milliseconds, `Z`."""
    text = instant.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def fts_string(value: str) -> str:
    """`value` as one FTS5 string: quoted, with quotes doubled, so it is never syntax."""
    return '"' + value.replace('"', '""') + '"'


def like_pattern(value: str) -> str:
    """A LIKE pattern (ESCAPE '\\') for values containing `value`."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def where(query: Query) -> tuple[str, list[object]]:
    """A WHERE clause over `messages` selecting what `query` selects, and its parameters.

    Positive indexed terms share one MATCH (FTS5 intersects them itself); each negated one
    is a NOT IN of its own, as FTS5's NOT needs something to subtract from.
    """
    clauses: list[str] = []
    parameters: list[object] = []
    matched: list[str] = []
    for term in query.terms:
        if isinstance(term, Text) and len(term.value) >= TRIGRAM and not term.negated:
            matched.append(_fts_term(term))
            continue
        clause, values = _clause(term)
        clauses.append(clause)
        parameters += values
    if matched:
        clauses.insert(0, _IN_INDEX)
        parameters.insert(0, " AND ".join(matched))
    return (" AND ".join(clauses) or "1"), parameters


def _fts_term(term: Text) -> str:
    quoted = fts_string(term.value)
    if term.field is Field.ANY:
        return quoted
    return f"{_COLUMNS[term.field][0]} : {quoted}"


def _clause(term: Term) -> tuple[str, list[object]]:
    if isinstance(term, Text):
        if len(term.value) >= TRIGRAM:
            return f"NOT {_IN_INDEX}", [_fts_term(term)]
        columns = _COLUMNS[term.field]
        likes = " OR ".join(_LIKE.format(column) for column in columns)
        if term.field is Field.ANY:  # the body is only in `texts`: read it in one pass
            likes = f"+seq IN (SELECT seq FROM texts WHERE {likes})"
        negation = "NOT " if term.negated else ""
        return f"{negation}({likes})", [like_pattern(term.value)] * len(columns)
    if isinstance(term, HasAttachment):
        return ("attachment_count > 0" if term.present else "attachment_count = 0"), []
    if isinstance(term, ReadState):
        return "is_read = ?", [int(term.read)]
    if isinstance(term, Received):
        return ("received_at < ?" if term.before else "received_at >= ?"), [sql_time(term.at)]
    if isinstance(term, After):
        return "(received_at, seq) > (?, ?)", [sql_time(term.received_at), term.seq]
    assert_never(term)
